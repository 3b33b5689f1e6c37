// Small DOM and formatting helpers shared by the page's scripts.

export const $ = (id) => document.getElementById(id);

export function formatBytes(n) {
  if (n >= 1024 ** 3) return (n / 1024 ** 3).toFixed(1) + " GiB";
  if (n >= 1024 ** 2) return (n / 1024 ** 2).toFixed(1) + " MiB";
  if (n >= 1024) return (n / 1024).toFixed(0) + " KiB";
  return n + " B";
}

export function formatNumber(value, digits) {
  if (value === null || value === undefined) return "—";
  return Number(value).toLocaleString("en-US", { maximumFractionDigits: digits });
}

export function hexToRgb(hex) {
  const n = parseInt(hex.slice(1), 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}

export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

export async function errorMessage(response) {
  let detail = response.statusText || "request failed";
  try {
    const body = await response.json();
    if (typeof body.detail === "string") detail = body.detail;
    else if (Array.isArray(body.detail)) detail = body.detail.map((d) => d.msg).join("; ");
  } catch (_) { /* not JSON */ }
  const prefix = { 413: "Too large", 415: "Unsupported file", 422: "Cannot process",
    429: "Server busy", 504: "Timed out" }[response.status];
  return (prefix ? prefix + ": " : `Error ${response.status}: `) + detail;
}

export function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}
