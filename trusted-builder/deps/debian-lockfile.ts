/**
 * The Debian lockfile: a project's pinned Debian packages, and the suites they come from. A small
 * YAML format of airlock's own (docs/configuration.md "Debian lockfiles"):
 *
 *   version: 1
 *   sources:
 *     - { uri: http://deb.debian.org/debian, suite: bookworm, components: [main], architectures: [amd64] }
 *   packages:
 *     - { name: jq, version: 1.6-2.1+deb12u2, architecture: amd64 }
 *
 * Hostile input: read through the bounded YAML reader (shared/yaml.ts) and a strict schema; names,
 * versions, suites, components and architectures must match Debian's rules for them before they go
 * into any URL or path. Each source's `uri` must be one of the mirrors the SRE allows (checked by
 * the fetcher, which knows the policy).
 */
import { z } from 'zod';
import { parseYaml } from '#shared/yaml.js';
import { zodIssues } from '#shared/schemas/issues.js';
import { DependencyRefused, quote } from './errors.js';

/** Debian policy 5.6.1: lowercase letters, digits, + - . ; two characters at least, starting alphanumeric. */
export const DebName = z.string().max(128).regex(/^[a-z0-9][a-z0-9+.-]+$/, 'not a Debian package name');
/** Debian policy 5.6.12: [epoch:]upstream[-revision]. */
export const DebVersion = z
  .string()
  .max(256)
  .regex(/^(?:\d{1,9}:)?[0-9][A-Za-z0-9.+~-]*(?:-[A-Za-z0-9.+~]+)?$/, 'not a Debian version')
  .refine((v) => !v.includes('..'), 'not a Debian version');
export const DebArchitecture = z.string().regex(/^[a-z0-9][a-z0-9-]{0,31}$/, 'not a Debian architecture');
const Suite = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/, 'not a suite name').refine((s) => !s.includes('..'), 'not a suite name');
const Component = z.string().regex(/^[a-z0-9][a-z0-9-]{0,63}$/, 'not a component name');
const MirrorUri = z
  .string()
  .max(2048)
  .url()
  .refine((u) => /^https?:$/.test(new URL(u).protocol), 'http or https')
  .refine((u) => !new URL(u).username && !new URL(u).password && !new URL(u).search && !new URL(u).hash, 'no credentials, query or fragment');

export const DebianSource = z.strictObject({
  uri: MirrorUri,
  suite: Suite,
  components: z.array(Component).min(1).max(8),
  architectures: z.array(DebArchitecture.refine((a) => a !== 'all', '`all` packages are in each architecture’s index: name a real architecture')).min(1).max(8),
});
export type DebianSource = z.infer<typeof DebianSource>;

export const DebianLockedPackage = z.strictObject({ name: DebName, version: DebVersion, architecture: DebArchitecture });
export type DebianLockedPackage = z.infer<typeof DebianLockedPackage>;

export const DebianLockfile = z.strictObject({
  version: z.literal(1),
  sources: z.array(DebianSource).min(1).max(8),
  packages: z.array(DebianLockedPackage).max(5000),
});
export type DebianLockfile = z.infer<typeof DebianLockfile>;

export const DEBIAN_LOCKFILE_MAX_BYTES = 1024 * 1024;

/** The lockfile at `file`, checked; throws DependencyRefused listing every problem. */
export function parseDebianLockfile(text: string, file: string): DebianLockfile {
  const y = parseYaml(text, file);
  const problems = (issues: readonly { path: string; message: string }[]): never => {
    throw new DependencyRefused(`${file}: ${issues.slice(0, 20).map((i) => (i.path ? `${i.path}: ${i.message}` : i.message)).join('; ')}`);
  };
  if (y.value === undefined) return problems(y.issues);
  const r = DebianLockfile.safeParse(y.value);
  if (!r.success) {
    // Name the package (or source) an issue is about: `packages[3] ("../x" 1.0): name: …`.
    const doc = y.value as { packages?: unknown; sources?: unknown };
    const entry = (list: unknown, i: number): string => {
      const e = Array.isArray(list) ? (list[i] as Record<string, unknown> | undefined) : undefined;
      return e && typeof e === 'object' ? ` (${[e.name ?? e.uri, e.version ?? e.suite].filter((x) => x !== undefined).map((x) => quote(x, 80)).join(' ')})` : '';
    };
    return problems(
      zodIssues(r.error, file).map((i) => ({
        ...i,
        path: i.path.replace(/^(packages|sources)\[(\d+)\]/, (m, list: string, n: string) => `${m}${entry(list === 'packages' ? doc.packages : doc.sources, Number(n))}`),
      })),
    );
  }
  const seen = new Set<string>();
  for (const p of r.data.packages) {
    const key = `${p.name} ${p.architecture}`;
    if (seen.has(key)) throw new DependencyRefused(`${file}: ${p.name} (${p.architecture}) is locked twice`);
    seen.add(key);
  }
  return r.data;
}
