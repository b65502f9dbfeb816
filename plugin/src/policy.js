// Where the extension may send what: the API key only over https (plain http only to this machine),
// the user's cookies only with images of the tab's own site. The options page and the service
// worker both apply these rules (the worker again, since storage can be edited elsewhere).

/** localhost, 127.0.0.0/8 or [::1], as `URL.hostname` writes them (it canonicalises IPv4 forms). */
export function isLoopbackHost(hostname) {
  return hostname === "localhost" || hostname === "[::1]" || /^127(\.\d{1,3}){3}$/.test(hostname);
}

/** Why ``url`` may not receive the API key, or "" when it may: https, or http to a loopback host. */
export function serverUrlProblem(url) {
  let u;
  try {
    u = new URL(url);
  } catch {
    return `the server URL is not a URL: ${url}`;
  }
  if (u.protocol === "https:") return "";
  if (u.protocol !== "http:") return `the server URL must start with https:// (got ${u.protocol}//)`;
  if (isLoopbackHost(u.hostname)) return "";
  return `refusing to send the API key unencrypted to ${u.host}: use https:// ` +
    "(plain http:// only to this machine: localhost, 127.x.x.x, [::1])";
}

function isIpLiteral(hostname) {
  return hostname.startsWith("[") || /^[\d.]+$/.test(hostname);
}

/**
 * Whether the image at ``imageUrl`` may be fetched with the user's cookies: only when it belongs
 * to the tab's site, meaning the same scheme and the same host or a sub-domain of the tab's host
 * (the extension has no public-suffix list, so a sibling such as cdn.example.com under
 * www.example.com counts as another site). Without a tab (``pageUrl`` empty), never.
 */
export function sameSite(imageUrl, pageUrl) {
  let img, page;
  try {
    img = new URL(imageUrl);
    page = new URL(pageUrl);
  } catch {
    return false;
  }
  if (img.protocol !== page.protocol || (page.protocol !== "http:" && page.protocol !== "https:")) return false;
  if (img.hostname === page.hostname) return true;
  return !isIpLiteral(page.hostname) && img.hostname.endsWith(`.${page.hostname}`);
}
