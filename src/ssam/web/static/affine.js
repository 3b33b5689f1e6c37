// NIfTI affines in the volume viewer: 4x4 matrices as arrays of rows, voxel (i, j, k) <->
// world mm (RAS+). Pure functions.

// The inverse of a 4x4 matrix (Gauss-Jordan with partial pivoting).
export function invert4(m) {
  const a = m.map((row, r) => [...row, ...[0, 1, 2, 3].map((c) => (c === r ? 1 : 0))]);
  for (let c = 0; c < 4; c++) {
    let pivot = c;
    for (let r = c + 1; r < 4; r++) if (Math.abs(a[r][c]) > Math.abs(a[pivot][c])) pivot = r;
    [a[c], a[pivot]] = [a[pivot], a[c]];
    const p = a[c][c];
    for (let k = 0; k < 8; k++) a[c][k] /= p;
    for (let r = 0; r < 4; r++) {
      if (r === c) continue;
      const f = a[r][c];
      for (let k = 0; k < 8; k++) a[r][k] -= f * a[c][k];
    }
  }
  return a.map((row) => row.slice(4));
}

// The first three coordinates of m · [v, 1]: voxel -> world, or back with the inverse.
export const apply4 = (m, v) =>
  [0, 1, 2].map((r) => m[r][0] * v[0] + m[r][1] * v[1] + m[r][2] * v[2] + m[r][3]);

// The NiiVue plane (0 axial, 1 coronal, 2 sagittal) that shows slices along the volume's
// third voxel axis, from NiiVue's ``permRAS`` (per RAS axis, the signed 1-based voxel axis
// laid along it): the plane across the RAS axis that voxel axis 3 became.
export function planeOfSliceAxis(permRAS) {
  const axis = Array.from(permRAS).findIndex((p) => Math.abs(p) === 3);
  return [2, 1, 0][axis];
}
