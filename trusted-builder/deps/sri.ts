/**
 * Subresource Integrity strings as npm writes them (`sha512-<base64>`, several separated by
 * spaces). Only sha512, sha384 and sha256 count; a string with nothing stronger than SHA-1 is
 * refused by the caller. The strongest algorithm present is the one checked, and a file matches
 * if it matches any digest of that algorithm (as the SRI specification says).
 */
export type SriAlgorithm = 'sha512' | 'sha384' | 'sha256';
const STRENGTH: Readonly<Record<SriAlgorithm, number>> = { sha256: 1, sha384: 2, sha512: 3 };
const DIGEST_BYTES: Readonly<Record<SriAlgorithm, number>> = { sha256: 32, sha384: 48, sha512: 64 };
const MAX_SRI_CHARS = 4096;

export interface Sri {
  algorithm: SriAlgorithm;
  /** The expected digests of that algorithm, hex. */
  hex: string[];
}

export type SriParse = { ok: true; sri: Sri } | { ok: false; problem: string };

export function parseSri(integrity: string): SriParse {
  if (integrity.length > MAX_SRI_CHARS) return { ok: false, problem: `integrity is longer than ${MAX_SRI_CHARS} characters` };
  const found = new Map<SriAlgorithm, string[]>();
  const seen = new Set<string>();
  for (const token of integrity.trim().split(/\s+/)) {
    if (token === '') continue;
    const m = /^([a-z0-9]+)-([A-Za-z0-9+/]+={0,2})(?:\?[\x21-\x7e]*)?$/.exec(token);
    if (!m) return { ok: false, problem: `integrity has a malformed entry ${JSON.stringify(token.slice(0, 40))}` };
    const algo = m[1]!;
    seen.add(algo);
    if (algo !== 'sha512' && algo !== 'sha384' && algo !== 'sha256') continue;
    const bytes = Buffer.from(m[2]!, 'base64');
    if (bytes.length !== DIGEST_BYTES[algo]) return { ok: false, problem: `integrity's ${algo} digest is ${bytes.length} bytes, not ${DIGEST_BYTES[algo]}` };
    found.set(algo, [...(found.get(algo) ?? []), bytes.toString('hex')]);
  }
  const best = [...found.keys()].sort((a, b) => STRENGTH[b] - STRENGTH[a])[0];
  if (!best) {
    if (seen.has('sha1')) return { ok: false, problem: 'integrity has only a SHA-1 digest (too weak; regenerate the lockfile with a current npm)' };
    return { ok: false, problem: `integrity has no sha512, sha384 or sha256 digest${seen.size ? ` (only ${[...seen].join(', ')})` : ''}` };
  }
  return { ok: true, sri: { algorithm: best, hex: found.get(best)! } };
}
