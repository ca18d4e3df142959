/**
 * leak check: before anything leaves the builder, every secret value in use is searched for in
 * the image's layers and config, the job logs and the build log (raw, base64, JSON-escaped…), on
 * the one export of the image that is then pushed (the bytes pushed are the bytes searched). A hit
 * ends the promotion, unpushed.
 */
import { createReadStream, createWriteStream } from 'node:fs';
import { join } from 'node:path';
import { PassThrough, type Readable } from 'node:stream';
import { finished } from 'node:stream/promises';
import type Docker from 'dockerode';
import { findLeaks, imageLayerSources, type Leak, type LeakSource } from '../../secrets/leak-check.js';
import { secretValues, type SecretStore } from '../../secrets/secret-store.js';
import { Stop, type Lane } from './lane.js';

export interface LeakCheckPort {
  docker: Docker;
  /** Every value it handed out is searched for. */
  secrets: SecretStore;
}

/** The image exported to the lane's work dir and searched; the export's path (what is pushed). */
export async function leakCheck(p: LeakCheckPort, l: Lane, image: { imageId: string; log: readonly string[] }, logs: readonly LeakSource[]): Promise<string> {
  const secrets = secretValues(p.secrets);
  const imageTar = join(l.work, 'image.tar');
  const leaks = await saveAndSearch(p.docker, image.imageId, imageTar, secrets, [...logs, { name: 'publish build log', data: Buffer.from(image.log.join('\n')) }]);
  l.phase('leak-check');
  await l.record('leak-check', { searched: secrets.length, leaks: leaks.length, where: leaks.slice(0, 20).map((x) => `${x.source} (${x.form})`) });
  if (leaks.length > 0) throw new Stop('refused', 'leak-check', `a secret in use appears in ${leaks.map((x) => `${x.source} (${x.form})`).slice(0, 5).join(', ')}: nothing was published`);
  return imageTar;
}

/**
 * `docker save` of `imageId` written to `file` and searched for `secrets` in the same pass (with
 * the `extra` sources first): one export, read once, and the file is what gets pushed.
 */
async function saveAndSearch(docker: Docker, imageId: string, file: string, secrets: readonly string[], extra: readonly LeakSource[]): Promise<Leak[]> {
  const image = (await docker.getImage(imageId).get()) as Readable;
  const toSearch = new PassThrough();
  const toFile = createWriteStream(file, { mode: 0o600, flags: 'wx' });
  image.on('error', (e) => {
    toSearch.destroy(e);
    toFile.destroy(e);
  });
  image.pipe(toSearch);
  image.pipe(toFile);
  const written = finished(toFile);
  written.catch(() => undefined); // awaited below; a failure of the search must not leave it unhandled
  try {
    // Fast: each layer searched as one raw tar. Only on a hit, again file by file (from the
    // export on disk), to say where.
    const sources = async function* (): AsyncGenerator<LeakSource> {
      yield* extra;
      yield* imageLayerSources(toSearch, { perFile: false });
    };
    const leaks = await findLeaks(secrets, sources());
    await written;
    const inLayers = leaks.filter((l) => l.source.startsWith('layer '));
    if (inLayers.length === 0) return leaks;
    const fromExtra = new Set(extra.map((x) => x.name));
    const detailed = await findLeaks(secrets, imageLayerSources(createReadStream(file)));
    // A raw hit the per-file pass cannot place (e.g. in a tar header field) still counts.
    const unplaced = inLayers.filter((l) => !detailed.some((x) => x.source.startsWith(`${l.source}:`)));
    return [...leaks.filter((l) => fromExtra.has(l.source)), ...detailed, ...unplaced];
  } catch (e) {
    image.destroy();
    toFile.destroy();
    throw e;
  }
}
