/** Freeze a validated config (or any plain data) all the way down; returns it. */
export function deepFreeze<T>(v: T): Readonly<T> {
  if (v && typeof v === 'object' && !Object.isFrozen(v)) {
    for (const k of Object.keys(v)) deepFreeze((v as Record<string, unknown>)[k]);
    Object.freeze(v);
  }
  return v;
}
