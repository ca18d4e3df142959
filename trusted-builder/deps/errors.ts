/**
 * What fetching a project's dependencies can end in besides success: a refusal (the lockfile, or
 * what a mirror served, is not acceptable: a weak or missing digest, a non-registry source, a
 * package not in the signed index, a digest mismatch, a bad signature) or a failure (the network,
 * a timeout, the disk). The dependencies stage (../promote/stages/dependencies.ts) turns them into
 * `Stop('refused' | 'failed', 'dependencies', message)`. Every message names the package and the
 * lockfile (or the mirror) it came from.
 */
export class DependencyRefused extends Error {
  override readonly name = 'DependencyRefused';
}

export class DependencyFailed extends Error {
  override readonly name = 'DependencyFailed';
}

/** A value quoted in a message: JSON, cut short (it may come from a hostile file). */
export function quote(v: unknown, max = 120): string {
  const s = typeof v === 'string' ? v : JSON.stringify(v) ?? String(v);
  const q = JSON.stringify(s.length > max ? `${s.slice(0, max)}…` : s);
  return q;
}
