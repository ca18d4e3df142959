/**
 * `npx tsx bench/leak-check.bench.ts`: where the builder's leak check spends its time, on the image
 * `bench:builder` publishes (a busybox base, then 8 × 1 MiB of zeros: a `docker save` of ~10 MiB)
 * and the secrets its builder holds (an armored signing key, a registry login, a hint key), each
 * part alone (median of BENCH_SAMPLES, default 5):
 * - save      `docker save` streamed from the engine and drained: the engine's export alone
 * - tar       the saved archive read from a file and split into sources (imageLayerSources with
 *             `perFile: false`, as the leak check stage uses it), each drained: parsing alone
 * - search    findLeaks over those sources from the file: the search, without the engine
 * - stage     findLeaks over `docker save` as it streams: what the stage waits for (less the
 *             write of the export to disk, which runs beside it)
 * BENCH_IMAGE searches another local image instead (e.g. airlock/base:bookworm).
 * The last line is JSON.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { finished } from 'node:stream/promises';
import { createDocker } from '#shared/docker/client.js';
import { findLeaks, imageLayerSources, type LeakSource } from '../trusted-builder/secrets/leak-check.js';
import { generateSigningKey } from '../scripts/make-signing-key.js';

const SAMPLES = Number(process.env.BENCH_SAMPLES ?? 5);
const BASE = 'airlock/base:busybox';
const docker = createDocker();
const dir = mkdtempSync(join(tmpdir(), 'airlock-bench-leak-'));
let image = process.env.BENCH_IMAGE;
const built = image === undefined ? `airlock-bench/leak-check:${process.pid}` : undefined;
if (built) {
  writeFileSync(join(dir, 'app.txt'), 'bench\n');
  writeFileSync(
    join(dir, 'Dockerfile'),
    `FROM ${BASE}\nCOPY app.txt /app.txt\nRUN ["/bin/busybox", "sh", "-c", "for i in 1 2 3 4 5 6 7 8; do head -c 1048576 /dev/zero > /tmp/blob$i; done; cat /app.txt > /built.txt"]\n`,
  );
  execFileSync('docker', ['build', '-q', '--network', 'none', '-t', built, dir], { stdio: ['ignore', 'ignore', 'inherit'] });
  image = built;
}
const key = await generateSigningKey({ name: 'airlock bench', email: 'bench@airlock.invalid' });
const secrets = [key.privateArmored, 'airlock-test', randomBytes(18).toString('base64url'), 'bench-hint-secret-of-some-length'];
const file = join(dir, 'image.tar');
const save = async (): Promise<Readable> => (await docker.getImage(image!).get()) as Readable;
await finished((await save()).pipe(createWriteStream(file)));

async function drain(data: LeakSource['data']): Promise<void> {
  if (data instanceof Uint8Array) return;
  for await (const _ of data as AsyncIterable<unknown>);
}

async function median(f: () => Promise<unknown>): Promise<number> {
  const xs: number[] = [];
  for (let i = 0; i < SAMPLES; i++) {
    const t0 = performance.now();
    await f();
    xs.push(performance.now() - t0);
  }
  return Math.round([...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!);
}

const parts = {
  saveMs: await median(async () => drain(await save())),
  tarMs: await median(async () => {
    for await (const s of imageLayerSources(createReadStream(file), { perFile: false })) await drain(s.data);
  }),
  searchMs: await median(() => findLeaks(secrets, imageLayerSources(createReadStream(file), { perFile: false }))),
  stageMs: await median(async () => findLeaks(secrets, imageLayerSources(await save(), { perFile: false }))),
};
if (built) await docker.getImage(built).remove({ force: true }).catch(() => undefined);
rmSync(dir, { recursive: true, force: true });

console.log(`image ${image}, ${secrets.length} secrets, median of ${SAMPLES}`);
console.log(`docker save alone: ${parts.saveMs} ms; tar parsing alone: ${parts.tarMs} ms; search from a file: ${parts.searchMs} ms`);
console.log(`search of docker save as it streams: ${parts.stageMs} ms`);
console.log(JSON.stringify({ bench: 'leak-check', samples: SAMPLES, image, secrets: secrets.length, ...parts }));
