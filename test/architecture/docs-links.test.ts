/**
 * The documentation stays inside the repository and stays whole (docs/testing.md "Architecture
 * tests"): every relative Markdown link in README.md and docs/*.md names a file or directory that
 * exists (and, with a `#anchor` into a Markdown file, a heading of that file), and every
 * `docs/<name>.md` that code under the source folders names exists, with each heading quoted after
 * it (`docs/gate.md "The window"`) present in that file.
 */
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { posix } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
/** Folders whose code may cite the docs. test/fixtures holds foreign data, not our comments. */
const CODE_DIRS = ['shared', 'untrusted-ci', 'trusted-builder', 'cli', 'test', 'scripts', 'demo', 'bench'] as const;
const CODE_EXT = /\.(?:ts|js|mjs|sh)$/;
const SKIP = new Set(['test/fixtures', 'node_modules']);

/** GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens. */
export function slug(heading: string): string {
  return heading
    .trim()
    .toLowerCase()
    .replace(/[^\p{L}\p{N} _-]/gu, '')
    .replace(/ /g, '-');
}

/** The headings of a Markdown text (ATX `#` lines outside fenced code), as written, inline code marks removed. */
export function headings(markdown: string): string[] {
  const out: string[] = [];
  let fenced = false;
  for (const line of markdown.split('\n')) {
    if (/^\s*```/.test(line)) fenced = !fenced;
    else if (!fenced) {
      const m = /^#{1,6}\s+(.+?)\s*#*\s*$/.exec(line);
      if (m?.[1]) out.push(m[1].replace(/`/g, ''));
    }
  }
  return out;
}

/** Anchors of a Markdown text, with GitHub's `-1`, `-2` suffixes for repeated headings. */
export function anchors(markdown: string): Set<string> {
  const seen = new Map<string, number>();
  const out = new Set<string>();
  for (const h of headings(markdown)) {
    const s = slug(h);
    const n = seen.get(s) ?? 0;
    out.add(n === 0 ? s : `${s}-${n}`);
    seen.set(s, n + 1);
  }
  return out;
}

/** Link targets of a Markdown text, fenced code and inline code left out. */
export function linkTargets(markdown: string): string[] {
  const text = markdown.replace(/^\s*```[\s\S]*?^\s*```/gm, '').replace(/`[^`\n]*`/g, '');
  return [...text.matchAll(/\]\(([^)\s]+)(?:\s+"[^"]*")?\)/g)].map((m) => m[1] ?? '');
}

/**
 * Problems with the relative links of the Markdown file `file` (a path from the repository root):
 * a missing target, or an anchor that is no heading of the Markdown file it points into.
 */
export function linkProblems(file: string, markdown: string, read: (path: string) => string | undefined): string[] {
  const problems: string[] = [];
  for (const target of linkTargets(markdown)) {
    if (/^[a-z][a-z0-9+.-]*:/i.test(target)) continue; // http:, https:, mailto:
    const [path = '', anchor] = target.split('#', 2);
    const resolved = path === '' ? file : posix.normalize(posix.join(posix.dirname(file), decodeURIComponent(path)));
    if (resolved.startsWith('..') || posix.isAbsolute(resolved)) {
      problems.push(`${file}: ${target} points outside the repository`);
      continue;
    }
    const content = read(resolved);
    if (content === undefined) {
      problems.push(`${file}: ${target}: no such file`);
      continue;
    }
    if (anchor !== undefined && resolved.endsWith('.md') && !anchors(content).has(anchor)) {
      problems.push(`${file}: ${target}: no heading with anchor #${anchor} in ${resolved}`);
    }
  }
  return problems;
}

/** `docs/<name>.md` citations in code, each with the headings quoted right after it. */
export function docCitations(source: string): { doc: string; headings: string[] }[] {
  // A citation may run over a comment's line break: join continuation lines first.
  const text = source.replace(/\n[ \t]*(?:\*(?!\/)|\/\/|#)[ \t]*/g, ' ');
  const out: { doc: string; headings: string[] }[] = [];
  for (const m of text.matchAll(/(?<![\w./-])docs\/([A-Za-z0-9_-]+\.md)(?!\w)((?:\s*,?\s*"[^"\n]+")*)/g)) {
    out.push({ doc: `docs/${m[1]}`, headings: [...(m[2] ?? '').matchAll(/"([^"\n]+)"/g)].map((h) => h[1] ?? '') });
  }
  return out;
}

/** Problems with the doc citations of the code file `file`. */
export function citationProblems(file: string, source: string, read: (path: string) => string | undefined): string[] {
  const problems: string[] = [];
  for (const c of docCitations(source)) {
    const doc = read(c.doc);
    if (doc === undefined) {
      problems.push(`${file}: cites ${c.doc}, which does not exist`);
      continue;
    }
    const have = new Set(headings(doc));
    for (const h of c.headings) if (!have.has(h)) problems.push(`${file}: cites ${c.doc} "${h}", which has no such heading`);
  }
  return problems;
}

function readRepo(path: string): string | undefined {
  const abs = posix.join(ROOT, path);
  if (!existsSync(abs)) return undefined;
  return statSync(abs).isDirectory() ? '' : readFileSync(abs, 'utf8');
}

function codeFiles(dir: string): string[] {
  if (SKIP.has(dir) || !existsSync(posix.join(ROOT, dir))) return [];
  return readdirSync(posix.join(ROOT, dir), { withFileTypes: true }).flatMap((e) => {
    const p = `${dir}/${e.name}`;
    if (e.isDirectory()) return codeFiles(p);
    return e.isFile() && CODE_EXT.test(e.name) ? [p] : [];
  });
}

const markdownFiles = ['README.md', ...readdirSync(posix.join(ROOT, 'docs')).filter((f) => f.endsWith('.md')).map((f) => `docs/${f}`)];

describe('links in README.md and docs/', () => {
  it.each(markdownFiles)('%s: every relative link resolves', (file) => {
    expect(linkProblems(file, readRepo(file) ?? '', readRepo)).toEqual([]);
  });

  it('README.md links every document in docs/', () => {
    const linked = new Set(linkTargets(readRepo('README.md') ?? '').map((t) => t.split('#')[0]));
    expect(markdownFiles.filter((f) => f.startsWith('docs/') && !linked.has(f))).toEqual([]);
  });
});

describe('doc citations in code', () => {
  const files = CODE_DIRS.flatMap((d) => codeFiles(d));

  it('finds the code to check', () => {
    expect(files.length).toBeGreaterThan(100);
    expect(files.some((f) => docCitations(readRepo(f) ?? '').some((c) => c.headings.length > 0))).toBe(true);
  });

  it('every cited doc and quoted heading exists', () => {
    expect(files.flatMap((f) => citationProblems(f, readRepo(f) ?? '', readRepo))).toEqual([]);
  });
});

describe('the checkers', () => {
  // Citations are built from parts so that this file's own text cites nothing broken.
  const D = 'docs/';
  const pages = '# Title\n\n## The window\n\n## Keys (what is accepted)\n\n```\n# not a heading\n```\n\n## The window\n';
  const files: Record<string, string> = { 'guide/a.md': pages, 'guide/b.md': '# B\n', [`${D}a.md`]: pages, [`${D}b.md`]: '# B\n' };
  const read = (p: string): string | undefined => files[p];

  it('computes GitHub anchors, repeated headings numbered', () => {
    expect([...anchors(pages)]).toEqual(['title', 'the-window', 'keys-what-is-accepted', 'the-window-1']);
    expect(slug('.airlock.yaml')).toBe('airlockyaml');
    expect(slug('policies/security-team/')).toBe('policiessecurity-team');
  });

  it('accepts good links and reports a missing file, a missing anchor and a way out', () => {
    const md = '[a](a.md) [w](a.md#the-window) [self](#b) [web](https://example.org/x.md) `[code](nope.md)`';
    expect(linkProblems('guide/b.md', md, read)).toEqual([]);
    expect(linkProblems('guide/b.md', '[x](nope.md) [y](a.md#nope) [z](../../etc/passwd)', read)).toEqual([
      'guide/b.md: nope.md: no such file',
      'guide/b.md: a.md#nope: no heading with anchor #nope in guide/a.md',
      'guide/b.md: ../../etc/passwd points outside the repository',
    ]);
  });

  it('reads citations across comment lines and reports a missing doc or heading', () => {
    const good = `/**\n * See ${D}a.md "The window", "Keys (what is accepted)" and\n * ${D}b.md.\n */\n// ${D}a.md\n// "The window"\n// https://example.org/api-${D}a.mdx`;
    expect(docCitations(good)).toEqual([
      { doc: `${D}a.md`, headings: ['The window', 'Keys (what is accepted)'] },
      { doc: `${D}b.md`, headings: [] },
      { doc: `${D}a.md`, headings: ['The window'] },
    ]);
    expect(citationProblems('x.ts', good, read)).toEqual([]);
    const bad = `// ${D}gone.md\n/* ${D}a.md "The Window" */`;
    expect(citationProblems('x.ts', bad, read)).toEqual([`x.ts: cites ${D}gone.md, which does not exist`, `x.ts: cites ${D}a.md "The Window", which has no such heading`]);
  });
});
