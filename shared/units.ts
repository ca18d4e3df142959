/**
 * Human units for sizes and durations, as policies, `.airlock.yaml` and CLI flags write them.
 * Sizes follow Docker: `k`, `m`, `g` (optionally `i`, `ib`, `b`) are powers of 1024; a bare
 * number is bytes. Durations: `ms`, `s`, `m`, `h`; a bare number is seconds.
 * Parsers return `undefined` for anything else: callers turn that into an Issue naming the field.
 */
const SIZE_UNITS: Record<string, number> = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 };
const SIZE_RE = /^(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?$/i;

export function parseBytes(input: string | number): number | undefined {
  if (typeof input === 'number') return Number.isSafeInteger(input) && input >= 0 ? input : undefined;
  const m = SIZE_RE.exec(input.trim());
  if (!m || input.length > 32) return undefined;
  const value = Number(m[1]) * (SIZE_UNITS[(m[2] ?? '').toLowerCase()] ?? NaN);
  return Number.isSafeInteger(Math.floor(value)) ? Math.floor(value) : undefined;
}

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };
const DURATION_RE = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h)?$/i;

/** Milliseconds. */
export function parseDuration(input: string | number): number | undefined {
  if (typeof input === 'number') return Number.isFinite(input) && input >= 0 ? Math.round(input * 1000) : undefined;
  const m = DURATION_RE.exec(input.trim());
  if (!m || input.length > 32) return undefined;
  const value = Number(m[1]) * (DURATION_UNITS[(m[2] ?? 's').toLowerCase()] ?? NaN);
  return Number.isSafeInteger(Math.round(value)) ? Math.round(value) : undefined;
}

/** Exact: the largest unit in which the size is a whole number or has at most two decimals. */
export function formatBytes(bytes: number): string {
  for (const [unit, size] of [['GiB', 1024 ** 3], ['MiB', 1024 ** 2], ['KiB', 1024]] as const) {
    const v = bytes / size;
    if (v >= 1 && Number.isInteger(v * 100)) {
      return `${Number.isInteger(v) ? v : Number(v.toFixed(2))} ${unit}`;
    }
  }
  return `${bytes} B`;
}

export function formatDuration(ms: number): string {
  if (ms < 1000) return `${ms} ms`;
  const s = ms / 1000;
  if (s < 120) return `${Number.isInteger(s) ? s : s.toFixed(1)} s`;
  const m = s / 60;
  return `${Number.isInteger(m) ? m : m.toFixed(1)} min`;
}
