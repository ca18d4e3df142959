/**
 * The pre-publish leak check on a real `docker save` of an image built with a secret in a file,
 * in ENV and in a registry auth (real Docker engine).
 */
import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { findLeaks, imageLayerSources, type LeakSource } from '../../trusted-builder/secrets/leak-check.js';
import { BUSYBOX } from '../support/docker.js';

const run = promisify(execFile);

describe('imageLayerSources on a real docker save', () => {
  const tag = `airlock-test/leak-check:${process.pid}-${randomBytes(4).toString('hex')}`;
  const fileSecret = `file-secret-${randomBytes(9).toString('base64url')}`;
  const envSecret = `env&secret<${randomBytes(6).toString('hex')}>`;
  const authSecret = `registry-pw-${randomBytes(6).toString('hex')}`;
  let context: string;

  beforeAll(async () => {
    context = mkdtempSync(join(tmpdir(), 'airlock-leak-'));
    writeFileSync(join(context, 'token.txt'), `${fileSecret}\n`);
    writeFileSync(join(context, 'config.json'), JSON.stringify({ auths: { 'registry.local': { auth: Buffer.from(`ci:${authSecret}`).toString('base64') } } }));
    writeFileSync(
      join(context, 'Dockerfile'),
      [`FROM ${BUSYBOX}`, 'COPY token.txt /etc/app/token.txt', 'COPY config.json /root/.docker/config.json', `ENV API_TOKEN="${envSecret}"`, ''].join('\n'),
    );
    await run('docker', ['build', '--network', 'none', '-q', '-t', tag, context], { timeout: 120_000 });
  });

  afterAll(async () => {
    await run('docker', ['rmi', '-f', tag]).catch(() => undefined);
    rmSync(context, { recursive: true, force: true });
  });

  it('finds the file secret in its layer, the ENV secret (Go-escaped) in the config, the base64 auth; the base image is clean', async () => {
    const save = spawn('docker', ['save', tag], { stdio: ['ignore', 'pipe', 'inherit'] });
    const exited = new Promise<number | null>((resolve) => save.on('close', resolve));
    const names: string[] = [];
    async function* tracked(): AsyncGenerator<LeakSource> {
      for await (const s of imageLayerSources(save.stdout)) {
        names.push(s.name);
        yield s;
      }
    }
    const secrets = [fileSecret, envSecret, authSecret, 'never-in-the-image-123'];
    const leaks = await findLeaks(secrets, tracked());
    expect(await exited).toBe(0);

    // The busybox base layer (made by `docker import`, so its names start with ./) was walked file by file.
    expect(names.filter((n) => n.startsWith('layer ')).length).toBeGreaterThan(5);
    expect(names.some((n) => /^layer [0-9a-f]{64}:bin\/busybox$/.test(n))).toBe(true);

    const fileHits = leaks.filter((l) => l.secret === 0);
    expect(fileHits.map((l) => [l.source.replace(/[0-9a-f]{64}/, '<id>'), l.form])).toEqual([['layer <id>:etc/app/token.txt', 'raw']]);

    // Docker writes the config with Go's encoding/json: `&`, `<`, `>` become \u0026, \u003c, \u003e.
    const envHits = leaks.filter((l) => l.secret === 1);
    expect(envHits.length).toBeGreaterThanOrEqual(1);
    expect(envHits.every((l) => l.form === 'json-escaped')).toBe(true);
    expect(envHits.map((l) => l.source)).toContainEqual(expect.stringMatching(/^config sha256:[0-9a-f]{64}$/));

    const authHits = leaks.filter((l) => l.secret === 2);
    expect(authHits.map((l) => [l.source.replace(/[0-9a-f]{64}/, '<id>'), l.form])).toEqual([['layer <id>:root/.docker/config.json', 'base64']]);

    expect(leaks.filter((l) => l.secret === 3)).toEqual([]);
    expect(JSON.stringify(leaks)).not.toMatch(new RegExp([fileSecret, authSecret].join('|')));
  });
});

describe('the raw layer search on a real docker save: a path the layer tar splits', () => {
  const tag = `airlock-test/leak-check-split:${process.pid}-${randomBytes(4).toString('hex')}`;
  // A secret holding `/` (as an AWS secret key can), made a path under a 129-byte directory: the
  // engine's tar writer stores each such path as a ustar prefix and name, split at a `/` inside
  // the secret, so no header holds it whole. The RUN spells it reversed, so the config does not.
  const secret = `${randomBytes(9).toString('base64url')}/${randomBytes(6).toString('hex')}/${randomBytes(14).toString('base64url')}`;
  const dir = `/srv/${'a'.repeat(60)}/${'b'.repeat(64)}`;
  let context: string;

  beforeAll(async () => {
    context = mkdtempSync(join(tmpdir(), 'airlock-leak-split-'));
    const reversed = [...secret].reverse().join('');
    writeFileSync(join(context, 'Dockerfile'), [`FROM ${BUSYBOX}`, `RUN s=$(echo '${reversed}' | rev) && mkdir -p "${dir}/$s" && echo hi > "${dir}/$s/${'z'.repeat(80)}"`, ''].join('\n'));
    await run('docker', ['build', '--network', 'none', '-q', '-t', tag, context], { timeout: 120_000 });
  });

  afterAll(async () => {
    await run('docker', ['rmi', '-f', tag]).catch(() => undefined);
    rmSync(context, { recursive: true, force: true });
  });

  it('finds it with perFile: false (as the promote stage searches) and places it in the entry names per file', async () => {
    const { stdout } = await run('docker', ['save', tag], { encoding: 'buffer', maxBuffer: 64 << 20 });
    expect(stdout.includes(secret)).toBe(false);
    const raw = await findLeaks([secret], imageLayerSources(Readable.from([stdout]), { perFile: false }));
    expect(raw.map((l) => [l.source.replace(/[0-9a-f]{64}/, '<id>'), l.form])).toEqual([['layer <id>', 'raw']]);
    const detailed = await findLeaks([secret], imageLayerSources(Readable.from([stdout])));
    expect(detailed.map((l) => [l.source.replace(/[0-9a-f]{64}/, '<id>'), l.form])).toEqual([['layer <id>:(entry names)', 'raw']]);
  });
});
