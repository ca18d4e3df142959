/**
 * The embargo warning webhook against a real HTTP server on 127.0.0.1: the body is an opaque notice
 * (no embargo id, commit or step) with a time and a nonce; its signature verifies with the real gpg and the
 * builder's public key (and fails on a changed body); 5xx is retried, 4xx is not.
 */
import { execFile } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SIGNATURE_HEADER, WARNING_NOTICE, WebhookNotifier } from '../../trusted-builder/notify/webhook.js';
import { loadSigningKey, type SigningKey } from '../../trusted-builder/sign/signer.js';
import { generateSigningKey } from '../../scripts/make-signing-key.js';

const run = promisify(execFile);

describe('embargo break warnings (webhook, signed)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'airlock-webhook-'));
  let key: SigningKey;
  let server: Server;
  let url: string;
  const got: { body: Buffer; signature: string }[] = [];
  const answers: number[] = [];

  beforeAll(async () => {
    key = await loadSigningKey((await generateSigningKey({ name: 'airlock builder', email: 'b@airlock.invalid' })).privateArmored);
    server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        got.push({ body: Buffer.concat(chunks), signature: String(req.headers[SIGNATURE_HEADER] ?? '') });
        res.statusCode = answers.shift() ?? 204;
        res.end();
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`;
    chmodSync(dir, 0o700);
    writeFileSync(join(dir, 'builder.asc'), key.publicArmored);
    await run('gpg', ['--homedir', dir, '--batch', '--import', join(dir, 'builder.asc')]);
  });
  afterAll(() => {
    server?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('posts only the opaque notice, a time and a nonce, signed; gpg verifies it and refuses a changed body', async () => {
    got.length = 0;
    const r = await new WebhookNotifier({ url, signingKey: key }).warn();
    expect(r).toEqual({ delivered: true, attempts: 1 });
    const { body, signature } = got[0]!;
    const parsed = JSON.parse(body.toString()) as Record<string, unknown>;
    expect(parsed).toEqual({ version: 2, event: 'embargo-changed', notice: WARNING_NOTICE, at: expect.stringMatching(/^\d{4}-\d\d-\d\dT/), nonce: expect.stringMatching(/^[0-9a-f]{32}$/) });
    expect(WARNING_NOTICE).toBe('something changed: run `airlock embargo list`');
    writeFileSync(join(dir, 'body'), body);
    writeFileSync(join(dir, 'body.asc'), Buffer.from(signature, 'base64'));
    const ok = await run('gpg', ['--homedir', dir, '--batch', '--status-fd', '1', '--verify', join(dir, 'body.asc'), join(dir, 'body')]);
    expect(ok.stdout).toMatch(/VALIDSIG/);
    writeFileSync(join(dir, 'body'), body.toString().replace('something', 'nothing'));
    await expect(run('gpg', ['--homedir', dir, '--batch', '--verify', join(dir, 'body.asc'), join(dir, 'body')])).rejects.toThrow(/BAD signature/);
  });

  it('retries 503 and 429 with backoff, gives up on 400 at once, and reports an unreachable hook without throwing', async () => {
    got.length = 0;
    answers.push(503, 429, 204);
    expect(await new WebhookNotifier({ url, signingKey: key, baseDelayMs: 1 }).warn()).toEqual({ delivered: true, attempts: 3 });
    answers.push(400);
    expect(await new WebhookNotifier({ url, signingKey: key, baseDelayMs: 1 }).warn()).toEqual({ delivered: false, attempts: 1, error: 'HTTP 400' });
    const closed = createServer();
    await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
    const port = (closed.address() as AddressInfo).port;
    await new Promise((r) => closed.close(r));
    const down = await new WebhookNotifier({ url: `http://127.0.0.1:${port}/x`, signingKey: key, baseDelayMs: 1, attempts: 2 }).warn();
    expect(down).toMatchObject({ delivered: false, attempts: 2, error: 'ECONNREFUSED' });
  });

  it('refuses plain http to anything but loopback', () => {
    expect(() => new WebhookNotifier({ url: 'http://team.example.org/hook', signingKey: key })).toThrow(/https/);
    expect(() => new WebhookNotifier({ url: 'https://team.example.org/hook', signingKey: key })).not.toThrow();
  });
});
