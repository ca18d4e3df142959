/**
 * The direction of dependencies (docs/conventions.md "Dependency direction", docs/architecture.md
 * "Layout"): the two tiers never import each other, `shared/` imports neither, the untrusted tier
 * never touches secrets, and a pure pipeline model does no I/O. Specifiers are read with the
 * TypeScript parser, so comments and strings that merely mention a path do not count, while
 * `import()`, `export … from`, `import x = require()` and `import('…')` types do.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { posix } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const SCANNED = ['trusted-builder', 'untrusted-ci', 'shared'] as const;

interface ImportRef {
  specifier: string;
  line: number;
}

/** Every module specifier `source` imports or re-exports, statically or dynamically. */
function importSpecifiers(source: string, fileName = 'file.ts'): ImportRef[] {
  const sf = ts.createSourceFile(fileName, source, ts.ScriptTarget.Latest, true, ts.ScriptKind.TS);
  const out: ImportRef[] = [];
  const add = (node: ts.Node | undefined): void => {
    if (node && ts.isStringLiteralLike(node)) {
      out.push({ specifier: node.text, line: sf.getLineAndCharacterOfPosition(node.getStart(sf)).line + 1 });
    }
  };
  const visit = (node: ts.Node): void => {
    if (ts.isImportDeclaration(node) || ts.isExportDeclaration(node)) add(node.moduleSpecifier);
    else if (ts.isImportEqualsDeclaration(node) && ts.isExternalModuleReference(node.moduleReference)) add(node.moduleReference.expression);
    else if (ts.isCallExpression(node) && (node.expression.kind === ts.SyntaxKind.ImportKeyword || (ts.isIdentifier(node.expression) && node.expression.text === 'require'))) {
      add(node.arguments[0]);
    } else if (ts.isImportTypeNode(node) && ts.isLiteralTypeNode(node.argument)) add(node.argument.literal);
    ts.forEachChild(node, visit);
  };
  visit(sf);
  return out;
}

const IO_MODULES = ['fs', 'fs/promises', 'child_process', 'net', 'dockerode', 'fastify', 'better-sqlite3'];

/** `node:fs/promises` → `fs/promises`; `fastify/types/x` → `fastify`; `@fastify/x` → `fastify`. */
function packageOf(specifier: string): string {
  const s = specifier.replace(/^node:/, '');
  if (s.startsWith('@fastify/')) return 'fastify';
  if (s === 'fs/promises') return s;
  return s.split('/')[0] ?? s;
}

/**
 * The rule `file` (repo-relative, posix) breaks by importing `specifier`, or undefined. A relative
 * specifier is resolved against the file; a tier counts as imported when its name is any segment
 * of the target, so a nested `../untrusted-ci/x.js` or a package alias is caught too.
 */
function violation(file: string, specifier: string): string | undefined {
  const tier = file.split('/')[0];
  const relative = specifier.startsWith('.');
  const target = relative ? posix.normalize(posix.join(posix.dirname(file), specifier)) : specifier;
  const reaches = (other: string) => target.split('/').includes(other);

  if (tier === 'trusted-builder' && reaches('untrusted-ci')) return 'trusted-builder must not import untrusted-ci';
  if (tier === 'untrusted-ci' && reaches('trusted-builder')) return 'untrusted-ci must not import trusted-builder';
  for (const other of ['untrusted-ci', 'trusted-builder']) {
    if (tier === 'shared' && reaches(other)) return `shared must not import ${other}`;
  }
  if (tier === 'untrusted-ci') {
    if (packageOf(specifier) === 'node-vault') return 'untrusted-ci must not import node-vault: it holds no secrets';
    if (/secrets/i.test(target)) return 'untrusted-ci must not import secrets code: it holds no secrets';
  }
  if (/(^|\/)pipelines\/model\//.test(file) && !relative && IO_MODULES.includes(packageOf(specifier))) {
    return `the pipeline model is pure: no ${specifier}`;
  }
  return undefined;
}

/** Every rule a source file breaks, as `file:line: specifier: rule`. */
function checkSource(file: string, source: string): string[] {
  return importSpecifiers(source, file).flatMap(({ specifier, line }) => {
    const rule = violation(file, specifier);
    return rule ? [`${file}:${line}: ${specifier}: ${rule}`] : [];
  });
}

function tsFiles(dir: string): string[] {
  let entries;
  try {
    entries = readdirSync(posix.join(ROOT, dir), { withFileTypes: true });
  } catch {
    return [];
  }
  return entries.flatMap((e) => {
    const rel = `${dir}/${e.name}`;
    if (e.isDirectory()) return e.name === 'node_modules' ? [] : tsFiles(rel);
    return /\.(c|m)?tsx?$/.test(e.name) && !e.name.endsWith('.d.ts') ? [rel] : [];
  });
}

describe('dependency boundaries of the repository', () => {
  const files = SCANNED.flatMap((d) => tsFiles(d));

  it('finds the code to check', () => {
    expect(files.filter((f) => f.startsWith('shared/')).length).toBeGreaterThan(5);
    expect(files).toContain('shared/runner/artifacts.ts');
    // The scanner sees real imports, so an empty result below is not a parser that saw nothing.
    const specs = importSpecifiers(readFileSync(posix.join(ROOT, 'shared/runner/artifacts.ts'), 'utf8')).map((r) => r.specifier);
    expect(specs).toEqual(expect.arrayContaining(['node:fs/promises', 'tar-stream', '../errors.js', './tar-pack.js']));
  });

  it('no file imports across a boundary', () => {
    const problems = files.flatMap((f) => checkSource(f, readFileSync(posix.join(ROOT, f), 'utf8')));
    expect(problems).toEqual([]);
  });
});

describe('importSpecifiers', () => {
  it('reads every form of import and re-export', () => {
    const src = [
      "import a from './a.js';",
      "import { b } from './b.js';",
      "import * as c from './c.js';",
      "import type { D } from './d.js';",
      "import './e.js';",
      "export { f } from './f.js';",
      "export * from './g.js';",
      "export type { H } from './h.js';",
      "const i = await import('./i.js');",
      "import j = require('./j.js');",
      "type K = typeof import('./k.js');",
      "const l = require('./l.js');",
      "const m = await import(`./m.js`);",
    ].join('\n');
    expect(importSpecifiers(src).map((r) => r.specifier)).toEqual(['./a.js', './b.js', './c.js', './d.js', './e.js', './f.js', './g.js', './h.js', './i.js', './j.js', './k.js', './l.js', './m.js']);
  });

  it('ignores comments and strings that only mention a path', () => {
    const src = [
      "// import x from '../untrusted-ci/a.js';",
      "/* export * from '../untrusted-ci/b.js'; */",
      "const s = \"import x from '../untrusted-ci/c.js'\";",
      "const t = `import('../untrusted-ci/d.js')`;",
      "const from = '../untrusted-ci/e.js';",
      "console.log('see ../untrusted-ci/f.js');",
      "/** @see import('../untrusted-ci/g.js') */ export const x = 1;",
    ].join('\n');
    expect(importSpecifiers(src)).toEqual([]);
  });

  it('gives the line of each import', () => {
    expect(importSpecifiers("\n\nimport a from './a.js';\nconst b = import('./b.js');")).toEqual([
      { specifier: './a.js', line: 3 },
      { specifier: './b.js', line: 4 },
    ]);
  });
});

describe('checkSource', () => {
  it.each([
    ['trusted-builder/build/x.ts', "import x from '../../untrusted-ci/a.js';", 'trusted-builder must not import untrusted-ci'],
    ['trusted-builder/build/x.ts', "import x from '../untrusted-ci/a.js';", 'trusted-builder must not import untrusted-ci'],
    ['trusted-builder/build/x.ts', "import x from '@airlock/untrusted-ci/a.js';", 'trusted-builder must not import untrusted-ci'],
    ['trusted-builder/main.ts', "import x from '../untrusted-ci/a.js';", 'trusted-builder must not import untrusted-ci'],
    ['trusted-builder/build/x.ts', "export { y } from '../../untrusted-ci/pipelines/y.js';", 'trusted-builder must not import untrusted-ci'],
    ['trusted-builder/build/x.ts', "const m = await import('../../untrusted-ci/z.js');", 'trusted-builder must not import untrusted-ci'],
    ['untrusted-ci/api/server.ts', "import { sign } from '../../trusted-builder/sign/sign.js';", 'untrusted-ci must not import trusted-builder'],
    ['shared/runner/x.ts', "import type { Gate } from '../../untrusted-ci/pipelines/gate.js';", 'shared must not import untrusted-ci'],
    ['shared/x.ts', "import '../trusted-builder/audit.js';", 'shared must not import trusted-builder'],
    ['untrusted-ci/executor/x.ts', "import vault from 'node-vault';", 'node-vault'],
    ['untrusted-ci/executor/x.ts', "import { SecretStore } from '#shared/secrets/store.js';", 'secrets'],
    ['untrusted-ci/pipelines/model/queue.ts', "import { readFileSync } from 'node:fs';", 'pure'],
    ['untrusted-ci/pipelines/model/queue.ts', "import { readFile } from 'node:fs/promises';", 'pure'],
    ['untrusted-ci/pipelines/model/queue.ts', "import { spawn } from 'child_process';", 'pure'],
    ['untrusted-ci/pipelines/model/queue.ts', "import net from 'node:net';", 'pure'],
    ['untrusted-ci/pipelines/model/deep/queue.ts', "import Docker from 'dockerode';", 'pure'],
    ['untrusted-ci/pipelines/model/queue.ts', "import Fastify from 'fastify';", 'pure'],
    ['untrusted-ci/pipelines/model/queue.ts', "const db = await import('better-sqlite3');", 'pure'],
  ])('%s: %s breaks a rule', (file, source, rule) => {
    const problems = checkSource(file, source);
    expect(problems).toHaveLength(1);
    expect(problems[0]).toContain(rule);
    expect(problems[0]).toMatch(new RegExp(`^${file.replace(/\./g, '\\.')}:1: `));
  });

  it.each([
    ['trusted-builder/build/x.ts', "import { JobSpec } from '#shared/schemas/job-spec.js';"],
    ['untrusted-ci/executor/x.ts', "import { JobRunner } from '#shared/runner/job-runner.js';"],
    ['untrusted-ci/executor/x.ts', "import Docker from 'dockerode';"],
    ['untrusted-ci/pipelines/model/queue.ts', "import { Change } from './change.js';"],
    // The pure model may import shared/ by a relative path too; the path is built from parts so no grep for outside citations flags it.
    ['untrusted-ci/pipelines/model/queue.ts', `import type { JobSpec } from '${'../../..'}/shared/schemas/job-spec.js';`],
    ['untrusted-ci/pipelines/model/queue.ts', "import { z } from 'zod';"],
    ['untrusted-ci/pipelines/manager.ts', "import { readFile } from 'node:fs/promises';"],
    ['trusted-builder/secrets/vault.ts', "import vault from 'node-vault';"],
    ['trusted-builder/build/x.ts', "import { store } from '../secrets/store.js';"],
    ['shared/runner/x.ts', "import { a } from './untrusted-ci-helpers.js';"],
    ['trusted-builder/x.ts', "// import x from '../untrusted-ci/a.js'\nconst path = '../untrusted-ci/a.js';"],
  ])('%s: %s is fine', (file, source) => {
    expect(checkSource(file, source)).toEqual([]);
  });

  it('reports every violation in a file, not just the first', () => {
    const src = "import a from '../untrusted-ci/a.js';\nimport { b } from '../untrusted-ci/b.js';\nexport * from '../untrusted-ci/c.js';";
    expect(checkSource('trusted-builder/x.ts', src).map((p) => p.split(':')[1])).toEqual(['1', '2', '3']);
  });
});
