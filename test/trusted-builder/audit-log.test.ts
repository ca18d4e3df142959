/** The hash-chained audit log and `airlock builder audit verify`, on real files in a temp dir. */
import { readFileSync } from 'node:fs';
import { appendFile, mkdtemp, open, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command } from 'commander';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { registerBuilderAuditCommand, runAuditVerify } from '../../cli/builder-audit.js';
import { ConflictError, InvalidInputError, NotFoundError } from '#shared/errors.js';
import { canonicalJson } from '../../trusted-builder/canonical-json.js';
import { AuditLog, GENESIS_HASH, isSecretLikeName, recordHash, verifyAuditLog, type AuditRecord } from '../../trusted-builder/audit/audit-log.js';

let dir: string;
let file: string;
const T0 = Date.parse('2025-03-01T12:00:00.000Z');

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'airlock-audit-'));
  file = join(dir, 'audit', 'builder.jsonl');
});
afterEach(async () => {
  vi.restoreAllMocks();
  await rm(dir, { recursive: true, force: true });
});

/** A log of `n` records, closed; returns what append returned. */
async function writeLog(n: number): Promise<AuditRecord[]> {
  let t = T0;
  const log = await AuditLog.open(file, { now: () => (t += 1000) });
  const out: AuditRecord[] = [];
  for (let i = 1; i <= n; i++) out.push(await log.append(i % 2 ? 'hint-accepted' : 'secret-read', i % 2 ? { project: 'acme/web', commit: `c${i}`, n: i } : { path: `kv/acme/${i}` }));
  await log.close();
  return out;
}

const lines = async () => (await readFile(file, 'utf8')).split('\n').slice(0, -1);
const setLines = (ls: string[]) => writeFile(file, ls.map((l) => `${l}\n`).join(''));

describe('AuditLog', () => {
  it('writes a chain that verifies: seq, time, prev → hash, 0600 file in a new directory', async () => {
    const records = await writeLog(5);
    expect(records.map((r) => r.seq)).toEqual([1, 2, 3, 4, 5]);
    expect(records[0]).toMatchObject({ seq: 1, at: '2025-03-01T12:00:01.000Z', kind: 'hint-accepted', project: 'acme/web', commit: 'c1', n: 1, prev: GENESIS_HASH });
    for (let i = 1; i < records.length; i++) expect(records[i]!.prev).toBe(records[i - 1]!.hash);
    for (const r of records) expect(r.hash).toBe(recordHash(r));

    const onDisk = (await lines()).map((l) => JSON.parse(l) as AuditRecord);
    expect(onDisk).toEqual(records);
    expect(Object.keys(onDisk[1]!)).toEqual(['seq', 'at', 'kind', 'path', 'prev', 'hash']); // readable order on disk
    expect(await verifyAuditLog(file)).toEqual({ ok: true, records: 5, head: records[4]!.hash });
    expect((await stat(file)).mode & 0o777).toBe(0o600);
    expect((await stat(join(dir, 'audit'))).mode & 0o777).toBe(0o700);
  });

  it('records hostile strings and fractional numbers as they come, and they verify (a lone surrogate, -0, 1e-7)', async () => {
    const log = await AuditLog.open(file);
    await log.append('hint-refused', { reason: 'bad \ud800 branch', ['k\udfff']: [0.1, -0, 1e-7, 1e21] });
    await log.close();
    expect(await verifyAuditLog(file)).toMatchObject({ ok: true, records: 1 });
    expect(await readFile(file, 'utf8')).toContain('bad \\ud800 branch');
  });

  it('an empty or new log verifies with the genesis head', async () => {
    const log = await AuditLog.open(file);
    expect([log.seq, log.head]).toEqual([0, GENESIS_HASH]);
    await log.close();
    expect(await verifyAuditLog(file)).toEqual({ ok: true, records: 0, head: GENESIS_HASH });
  });

  it('hashes canonical JSON: key order and spacing on disk do not matter', async () => {
    expect(canonicalJson({ b: [1, { d: null, c: 'x' }], a: true })).toBe('{"a":true,"b":[1,{"c":"x","d":null}]}');
    await writeLog(3);
    const ls = await lines();
    const reordered = Object.fromEntries(Object.entries(JSON.parse(ls[1]!) as object).reverse());
    ls[1] = JSON.stringify(reordered, null, 1).replaceAll('\n', ' ');
    await setLines(ls);
    expect(await verifyAuditLog(file)).toMatchObject({ ok: true, records: 3 });
  });

  it('reopening continues the chain', async () => {
    const first = await writeLog(3);
    const log = await AuditLog.open(file, { now: () => T0 });
    expect([log.seq, log.head]).toEqual([3, first[2]!.hash]);
    const next = await log.append('verify-passed', { commit: 'c4' });
    expect(next).toMatchObject({ seq: 4, prev: first[2]!.hash });
    await log.close();
    expect(await verifyAuditLog(file)).toEqual({ ok: true, records: 4, head: next.hash });
  });

  it('serialises concurrent appends in call order, each on disk when it resolves', async () => {
    const log = await AuditLog.open(file);
    const probe = await open(join(dir, 'probe'), 'w');
    const sync = vi.spyOn(Object.getPrototypeOf(probe) as { sync(): Promise<void> }, 'sync');
    await probe.close();
    const onDiskWhenResolved: boolean[] = [];
    const results = await Promise.all(
      Array.from({ length: 40 }, (_, i) =>
        log.append('tests-passed', { job: `job-${i}` }).then((r) => {
          onDiskWhenResolved.push(readFileSync(file, 'utf8').includes(r.hash));
          return r;
        }),
      ),
    );
    expect(onDiskWhenResolved).toEqual(Array(40).fill(true));
    expect(results.map((r) => r.seq)).toEqual(Array.from({ length: 40 }, (_, i) => i + 1));
    expect(results.map((r) => r.job)).toEqual(Array.from({ length: 40 }, (_, i) => `job-${i}`));
    expect(sync.mock.calls.length).toBeGreaterThanOrEqual(40);
    await log.close();
    const v = await verifyAuditLog(file);
    expect(v).toEqual({ ok: true, records: 40, head: results[39]!.hash });
    expect((await lines()).map((l) => (JSON.parse(l) as AuditRecord).job)).toEqual(results.map((r) => r.job));
  });

  it('a refused append writes nothing and takes no seq; later appends still work', async () => {
    const log = await AuditLog.open(file);
    await log.append('hint-accepted', { project: 'p' });
    await expect(log.append('secret-read', { path: 'kv/x', value: 's3cr3t' })).rejects.toBeInstanceOf(InvalidInputError);
    await expect(log.append('no-such-kind' as 'embargo', {})).rejects.toThrow(/unknown audit kind/);
    const r = await log.append('secret-read', { path: 'kv/x' });
    expect(r.seq).toBe(2);
    await log.close();
    expect(await readFile(file, 'utf8')).not.toContain('s3cr3t');
    await expect(log.append('embargo', {})).rejects.toThrow(/closed/);
  });

  it('refuses secret-looking, reserved and non-JSON fields, listing every one', async () => {
    const log = await AuditLog.open(file);
    const err = await log
      .append('signed', {
        value: 'x',
        registryPassword: 'x',
        details: { apiToken: 'x', nested: [{ client_secret: 'x' }], fine: 1 },
        PRIVATE_KEY: 'x',
        seq: 99,
        n: Number.NaN,
        when: new Date() as unknown as string,
        // eslint-disable-next-line no-sparse-arrays
        holes: [1, , 2] as unknown as string,
      })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InvalidInputError);
    expect((err as InvalidInputError).issues.map((i) => i.path).sort()).toEqual(
      ['PRIVATE_KEY', 'details.apiToken', 'details.nested[0].client_secret', 'holes[1]', 'n', 'registryPassword', 'seq', 'value', 'when'].sort(),
    );
    await log.close();
    expect(await readFile(file, 'utf8')).toBe('');
  });

  it.each([
    ['value', true], ['secretValue', true], ['secretPath', true], ['GITHUB_TOKEN', true], ['APIToken', true], ['passwd', true],
    ['signingPassphrase', true], ['credentials', true], ['apiKey', true], ['pwd', true],
    ['path', false], ['project', false], ['keyId', false], ['fingerprint', false], ['valuation', false], ['digest', false],
  ])('isSecretLikeName(%j) is %j', (name, expected) => expect(isSecretLikeName(name)).toBe(expected));

  it('refuses to open a log whose last write was cut short, naming the line', async () => {
    await writeLog(3);
    const text = await readFile(file, 'utf8');
    await writeFile(file, text.slice(0, -20)); // a crash mid-append
    const err = await AuditLog.open(file).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ConflictError);
    expect((err as Error).message).toMatch(/line 3: not valid JSON.*refusing to append/);
    expect(await readFile(file, 'utf8')).toBe(text.slice(0, -20)); // nothing appended
  });

  it('refuses to open a log whose last line lacks its newline or whose last record was edited', async () => {
    await writeLog(3);
    const text = await readFile(file, 'utf8');
    await writeFile(file, text.slice(0, -1));
    await expect(AuditLog.open(file)).rejects.toThrow(/line 3: the last line has no newline/);
    await writeFile(file, text.replace('"commit":"c3"', '"commit":"c9"'));
    await expect(AuditLog.open(file)).rejects.toThrow(/line 3: hash does not match/);
  });

  it('reads the tail across chunk boundaries (records larger than a read chunk)', async () => {
    const log = await AuditLog.open(file);
    for (let i = 0; i < 3; i++) await log.append('leak-check', { note: 'x'.repeat(100_000 + i) });
    await log.close();
    const again = await AuditLog.open(file);
    expect(again.seq).toBe(3);
    await again.close();
  });

  it('stops appending when another writer grew the file', async () => {
    const log = await AuditLog.open(file);
    await log.append('hint-accepted', { project: 'p' });
    await appendFile(file, 'intruder\n');
    await expect(log.append('hint-accepted', { project: 'p' })).rejects.toBeInstanceOf(ConflictError);
    await expect(log.append('hint-accepted', { project: 'p' })).rejects.toThrow(/another process/);
    await log.close();
  });
});

describe('verifyAuditLog finds tampering', () => {
  it('an edited field: the line whose hash no longer matches', async () => {
    await writeLog(5);
    const ls = await lines();
    ls[2] = ls[2]!.replace('"commit":"c3"', '"commit":"evil"');
    await setLines(ls);
    expect(await verifyAuditLog(file)).toEqual({ ok: false, line: 3, problem: expect.stringMatching(/hash does not match/) });
  });

  it('an edited record whose hash was recomputed: the next line no longer links to it', async () => {
    await writeLog(5);
    const ls = await lines();
    const r = JSON.parse(ls[2]!) as Record<string, string>;
    r.commit = 'evil';
    r.hash = recordHash(r);
    ls[2] = JSON.stringify(r);
    await setLines(ls);
    expect(await verifyAuditLog(file)).toEqual({ ok: false, line: 4, problem: expect.stringMatching(/prev does not match/) });
  });

  it('a deleted middle record', async () => {
    await writeLog(5);
    const ls = await lines();
    ls.splice(2, 1);
    await setLines(ls);
    expect(await verifyAuditLog(file)).toEqual({ ok: false, line: 3, problem: expect.stringMatching(/seq 4 where 3 was expected/) });
  });

  it('a deleted first record', async () => {
    await writeLog(3);
    await setLines((await lines()).slice(1));
    expect(await verifyAuditLog(file)).toMatchObject({ ok: false, line: 1 });
  });

  it('two swapped records', async () => {
    await writeLog(5);
    const ls = await lines();
    [ls[1], ls[3]] = [ls[3]!, ls[1]!];
    await setLines(ls);
    expect(await verifyAuditLog(file)).toEqual({ ok: false, line: 2, problem: expect.stringMatching(/seq 4 where 2 was expected/) });
  });

  it('a renumbered swap (seq edited too) still breaks the hash', async () => {
    await writeLog(4);
    const ls = (await lines()).map((l) => JSON.parse(l) as Record<string, unknown>);
    [ls[1], ls[2]] = [{ ...ls[2], seq: 2 }, { ...ls[1], seq: 3 }];
    await setLines(ls.map((r) => JSON.stringify(r)));
    expect(await verifyAuditLog(file)).toMatchObject({ ok: false, line: 2, problem: expect.stringMatching(/hash does not match/) });
  });

  it('a deleted LAST record is invisible in the file alone, but the head changes', async () => {
    const records = await writeLog(5);
    const before = await verifyAuditLog(file);
    await setLines((await lines()).slice(0, -1));
    const after = await verifyAuditLog(file);
    expect(after).toEqual({ ok: true, records: 4, head: records[3]!.hash });
    expect(before.ok && after.ok && before.head !== after.head).toBe(true);
  });

  it.each([
    ['a garbled line', (ls: string[]) => (ls[1] = `${ls[1]!.slice(0, 30)}\u001b[2J#!@`), 2, /not valid JSON/],
    ['a line cut in the middle of the file', (ls: string[]) => (ls[2] = ls[2]!.slice(0, ls[2]!.length / 2)), 3, /not valid JSON/],
    ['an empty line in the middle', (ls: string[]) => ls.splice(2, 0, ''), 3, /empty line/],
    ['a JSON line that is not a record', (ls: string[]) => (ls[0] = '{"hello":"world"}'), 1, /not an audit record/],
    ['a record with an unknown kind', (ls: string[]) => (ls[0] = ls[0]!.replace('hint-accepted', 'hint-forged')), 1, /not an audit record: kind/],
  ])('%s', async (_name, edit, line, problem) => {
    await writeLog(4);
    const ls = await lines();
    edit(ls);
    await setLines(ls);
    const v = await verifyAuditLog(file);
    expect(v).toEqual({ ok: false, line, problem: expect.stringMatching(problem) });
    expect(JSON.stringify(v)).not.toContain('\u001b'); // a tampered line's bytes are not echoed
  });

  it('a missing file is NotFoundError (the CLI exits 2)', async () => {
    const err = await verifyAuditLog(join(dir, 'nope.jsonl')).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NotFoundError);
    expect((err as NotFoundError).httpStatus).toBeLessThan(500);
  });
});

describe('airlock builder audit verify', () => {
  const run = async (f: string, json = false) => {
    let out = '';
    const code = await runAuditVerify(f, { json }, (s) => (out += s));
    return { code, out };
  };

  it('prints ok with the record count and head, exit 0', async () => {
    const records = await writeLog(3);
    expect(await run(file)).toEqual({ code: 0, out: `ok: 3 records, head ${records[2]!.hash}\n` });
    expect(JSON.parse((await run(file, true)).out)).toEqual({ ok: true, records: 3, head: records[2]!.hash });
  });

  it('names the first bad line and the problem, exit 1', async () => {
    await writeLog(3);
    const ls = await lines();
    ls.splice(1, 1);
    await setLines(ls);
    expect(await run(file)).toEqual({ code: 1, out: `${file}: line 2: seq 3 where 2 was expected: a record was deleted, inserted or moved\n` });
    const json = await run(file, true);
    expect(json.code).toBe(1);
    expect(JSON.parse(json.out)).toMatchObject({ ok: false, line: 2 });
  });

  it('a missing file throws the AirlockError main.ts maps to exit 2 (and --json prints it)', async () => {
    await expect(run(join(dir, 'nope.jsonl'))).rejects.toBeInstanceOf(NotFoundError);
    let out = '';
    await expect(runAuditVerify(join(dir, 'nope.jsonl'), { json: true }, (s) => (out += s))).rejects.toThrow(/does not exist/);
    expect(JSON.parse(out)).toMatchObject({ error: { code: 'AIRLOCK_E_NOT_FOUND', statusCode: 404 } });
  });

  it('is wired as `builder audit verify FILE [--json]`', async () => {
    await writeLog(2);
    const program = new Command('airlock').exitOverride();
    registerBuilderAuditCommand(program.command('builder'));
    const written: string[] = [];
    vi.spyOn(process.stdout, 'write').mockImplementation((s: string | Uint8Array) => (written.push(String(s)), true));
    const saved = process.exitCode;
    try {
      await program.parseAsync(['node', 'airlock', 'builder', 'audit', 'verify', file, '--json']);
      expect(process.exitCode).toBe(0);
    } finally {
      process.exitCode = saved;
    }
    expect(JSON.parse(written.join(''))).toMatchObject({ ok: true, records: 2 });
  });
});
