/**
 * The Content-Security-Policy of both services' pages (the CI's status page, the builder's page):
 * their own files only; no inline script or style, no plugins, no framing, no forms, no other
 * origin. What they show is attacker-written text, inserted as text; this is the second fence.
 */
export const PAGE_CSP = [
  "default-src 'self'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self'",
  "connect-src 'self'",
  "object-src 'none'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ');
