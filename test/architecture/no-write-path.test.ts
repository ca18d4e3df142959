/**
 * The public tier holds no way to write a git ref of a project: the review system merges. This
 * reads every source file of `untrusted-ci/` (and what it runs git with, `shared/git/`) for the
 * ways git writes to another repository: `push`, `send-pack`, `receive-pack`, a lease, a remote
 * `update-ref`. `git update-ref` on its own mirror is fine (its own `refs/airlock/…`); what is
 * refused is a git command line that names a push. The strings are read with the TypeScript
 * parser: comments that mention pushing do not count, a `'push'` argument anywhere does.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { posix } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
/** git subcommands and options that write to a remote. */
const WRITES = /^(push|send-pack|receive-pack|--force-with-lease.*|--mirror|remote\.[^.]+\.push.*|--push-option.*)$/;

function tsFiles(dir: string): string[] {
  return readdirSync(posix.join(ROOT, dir), { withFileTypes: true }).flatMap((e) => {
    const rel = `${dir}/${e.name}`;
    if (e.isDirectory()) return tsFiles(rel);
    return e.name.endsWith('.ts') ? [rel] : [];
  });
}

/** Every string literal (and template piece) of a source, with its line. */
function strings(source: string, file: string): { text: string; line: number }[] {
  const sf = ts.createSourceFile(file, source, ts.ScriptTarget.Latest, true, ts.ScriptKind.TS);
  const out: { text: string; line: number }[] = [];
  const visit = (n: ts.Node): void => {
    if (ts.isStringLiteralLike(n) || ts.isTemplateHead(n) || ts.isTemplateMiddle(n) || ts.isTemplateTail(n)) {
      out.push({ text: n.text, line: sf.getLineAndCharacterOfPosition(n.getStart(sf)).line + 1 });
    }
    ts.forEachChild(n, visit);
  };
  visit(sf);
  return out;
}

function writePaths(file: string, source: string): string[] {
  return strings(source, file).flatMap(({ text, line }) => (text.split(/\s+/).some((w) => WRITES.test(w)) ? [`${file}:${line}: ${JSON.stringify(text)}`] : []));
}

describe('the public tier cannot write a project branch', () => {
  const files = [...tsFiles('untrusted-ci'), ...tsFiles('shared/git')];

  it('finds the git code it checks', () => {
    expect(files).toEqual(expect.arrayContaining(['untrusted-ci/merger/mirror.ts', 'untrusted-ci/merger/merger.ts', 'shared/git/git.ts']));
    // The scanner does see git arguments, so an empty result below is not a parser that saw nothing.
    expect(strings(readFileSync(posix.join(ROOT, 'untrusted-ci/merger/mirror.ts'), 'utf8'), 'mirror.ts').map((s) => s.text)).toEqual(expect.arrayContaining(['fetch', 'ls-remote']));
  });

  it('no git command line in untrusted-ci/ pushes, sends a pack or takes a lease', () => {
    expect(files.flatMap((f) => writePaths(f, readFileSync(posix.join(ROOT, f), 'utf8')))).toEqual([]);
  });

  it('the check itself catches the forms a push would take', () => {
    expect(writePaths('x.ts', "runGit(['push', '--porcelain', url, `${a}:${b}`]);")).toHaveLength(1);
    expect(writePaths('x.ts', 'const args = ["send-pack", url];')).toHaveLength(1);
    expect(writePaths('x.ts', 'git(`--force-with-lease=${ref}:${old}`);')).toHaveLength(1);
    expect(writePaths('x.ts', "run('git push origin HEAD');")).toHaveLength(1);
    expect(writePaths('x.ts', '// we never push\nconst pushed = [];\nissues.push(x);')).toEqual([]);
  });
});
