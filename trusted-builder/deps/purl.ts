/**
 * Package URLs (purl) as the provenance names dependencies: `pkg:npm/%40types/ms@0.7.34`,
 * `pkg:deb/debian/jq@1.6-2.1%2Bdeb12u2?arch=amd64`. Each part is percent-encoded except
 * letters, digits and `. - _ ~` (and `:` in a version: a Debian epoch stays readable).
 */
const enc = (s: string, keep = ''): string =>
  [...s].map((c) => (/[A-Za-z0-9._~-]/.test(c) || keep.includes(c) ? c : [...Buffer.from(c, 'utf8')].map((b) => `%${b.toString(16).toUpperCase().padStart(2, '0')}`).join(''))).join('');

export function npmPurl(name: string, version: string): string {
  const [scope, base] = name.startsWith('@') ? [name.slice(0, name.indexOf('/')), name.slice(name.indexOf('/') + 1)] : [undefined, name];
  return `pkg:npm/${scope ? `${enc(scope)}/` : ''}${enc(base)}@${enc(version, ':')}`;
}

export function debPurl(name: string, version: string, architecture: string): string {
  return `pkg:deb/debian/${enc(name)}@${enc(version, ':')}?arch=${enc(architecture)}`;
}
