/**
 * The pre-publish leak check: every form of every secret, across chunk boundaries, in buffers,
 * streams and synthetic `docker save` archives. A real `docker save` is in
 * leak-check.docker.test.ts.
 */
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { gzipSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { InvalidInputError } from '#shared/errors.js';
import { findLeaks, imageLayerSources, MIN_SECRET_LENGTH, needlesOf, skippedSecrets, type Leak, type LeakSource } from '../../trusted-builder/secrets/leak-check.js';
import { tarOf } from '../support/tar.js';

const SECRET = 'sk_live_4f9Qx7Lm2Vb8';

function buf(...parts: (string | Buffer)[]): Buffer {
  return Buffer.concat(parts.map((p) => (typeof p === 'string' ? Buffer.from(p, 'utf8') : p)));
}

/** A source that delivers `data` in the given chunks (cut at `cuts` offsets). */
function split(name: string, data: Buffer, cuts: number[]): LeakSource {
  const points = [0, ...cuts.filter((c) => c > 0 && c < data.length).sort((a, b) => a - b), data.length];
  const chunks = points.slice(1).map((end, i) => data.subarray(points[i], end));
  return { name, data: Readable.from(chunks) };
}

async function leaksIn(secrets: string[], ...sources: LeakSource[]): Promise<Leak[]> {
  return findLeaks(secrets, sources);
}

function pick(leaks: Leak[]): { source: string; secret: number; form: string }[] {
  return leaks.map(({ source, secret, form }) => ({ source, secret, form }));
}

describe('findLeaks on buffers', () => {
  it('finds a raw secret with its offset and count; names it by index only', async () => {
    const data = buf('config: ', SECRET, '\nagain: ', SECRET, '\n');
    const leaks = await leaksIn(['other-secret-x', SECRET], { name: 'build.log', data });
    expect(leaks).toEqual([{ source: 'build.log', secret: 1, form: 'raw', offset: 8, count: 2 }]);
    expect(JSON.stringify(leaks)).not.toContain(SECRET);
  });

  it('finds nothing in clean data, and nothing for a near miss', async () => {
    const noise = randomBytes(256 * 1024);
    const nearMiss = buf(SECRET.slice(0, -1), 'X ', SECRET.slice(1));
    expect(await leaksIn([SECRET], { name: 'noise', data: noise }, { name: 'near', data: nearMiss })).toEqual([]);
  });

  it(`skips secrets shorter than ${MIN_SECRET_LENGTH} characters, and says which`, async () => {
    const secrets = ['admin', 'héllo', 'abcdef', ''];
    expect(skippedSecrets(secrets)).toEqual([0, 1, 3]);
    const leaks = await leaksIn(secrets, { name: 'f', data: buf('user admin héllo abcdef') });
    expect(pick(leaks)).toEqual([{ source: 'f', secret: 2, form: 'raw' }]);
  });

  it('reports a secret listed twice once, under its first index', async () => {
    expect(pick(await leaksIn([SECRET, SECRET], { name: 'f', data: buf(SECRET) }))).toEqual([{ source: 'f', secret: 0, form: 'raw' }]);
  });

  it('keeps sources apart and in order', async () => {
    const leaks = await leaksIn([SECRET, 'second-secret-99'], { name: 'a', data: buf('second-secret-99') }, { name: 'b', data: buf('-') }, { name: 'c', data: buf(SECRET, ' second-secret-99') });
    expect(pick(leaks)).toEqual([
      { source: 'a', secret: 1, form: 'raw' },
      { source: 'c', secret: 0, form: 'raw' },
      { source: 'c', secret: 1, form: 'raw' },
    ]);
  });

  it('a result never holds the secret, or its base64', async () => {
    const leaks = await leaksIn([SECRET], { name: 'x', data: buf(SECRET, Buffer.from(SECRET).toString('base64')) });
    expect(leaks.length).toBeGreaterThan(0);
    const text = JSON.stringify(leaks);
    for (const { bytes } of needlesOf(SECRET)) expect(text).not.toContain(bytes.toString('latin1'));
  });
});

describe('findLeaks on streams', () => {
  it('finds a secret split at every offset, and at every pair of offsets', async () => {
    const pre = 'log line 1\nlog: ';
    const data = buf(pre, SECRET, '\nlog line 3\n');
    const at = Buffer.byteLength(pre);
    for (let i = at - 1; i <= at + SECRET.length + 1; i++) {
      const leaks = await leaksIn([SECRET], split(`cut@${i}`, data, [i]));
      expect(leaks, `cut at ${i}`).toEqual([{ source: `cut@${i}`, secret: 0, form: 'raw', offset: at, count: 1 }]);
      for (let j = i + 1; j <= at + SECRET.length; j++) {
        expect(pick(await leaksIn([SECRET], split('two', data, [i, j]))), `cuts at ${i},${j}`).toEqual([{ source: 'two', secret: 0, form: 'raw' }]);
      }
    }
  });

  it('finds it when every byte is its own chunk', async () => {
    const data = buf('xx', SECRET, 'yy');
    const leaks = await leaksIn([SECRET], split('bytes', data, [...data.keys()]));
    expect(leaks).toEqual([{ source: 'bytes', secret: 0, form: 'raw', offset: 2, count: 1 }]);
  });

  it('a long secret (a PEM key, > 32 bytes) is compared in full across chunks; the same header is not a hit', async () => {
    const body = randomBytes(1200).toString('base64').replace(/.{64}/g, '$&\n');
    const pem = `-----BEGIN PRIVATE KEY-----\n${body}\n-----END PRIVATE KEY-----\n`;
    const otherPem = `-----BEGIN PRIVATE KEY-----\n${randomBytes(1200).toString('base64')}\n-----END PRIVATE KEY-----\n`;
    const data = buf(otherPem, 'junk', pem, 'tail');
    for (const cuts of [[], [40], [500, 501, 1700], [...Array(60).keys()].map((k) => k * 97)]) {
      const leaks = await leaksIn([pem], split('key', data, cuts));
      expect(pick(leaks), `cuts ${cuts.length}`).toEqual([{ source: 'key', secret: 0, form: 'raw' }]);
      expect(leaks[0]!.offset).toBe(Buffer.byteLength(otherPem) + 4);
    }
    expect(await leaksIn([pem], { name: 'other', data: buf(otherPem, pem.slice(0, -10)) })).toEqual([]);
  });

  it('accepts Buffers, Readables and async iterables of strings', async () => {
    async function* strings(): AsyncGenerator<string> {
      yield 'abc ';
      yield SECRET.slice(0, 5);
      yield SECRET.slice(5);
    }
    const leaks = await leaksIn([SECRET], { name: 'gen', data: strings() }, { name: 'readable', data: Readable.from([buf(SECRET)]) });
    expect(pick(leaks)).toEqual([
      { source: 'gen', secret: 0, form: 'raw' },
      { source: 'readable', secret: 0, form: 'raw' },
    ]);
  });

  it('a failing source stream fails the check (fail closed)', async () => {
    const broken = new Readable({
      read() {
        this.destroy(new Error('disk read error'));
      },
    });
    await expect(leaksIn([SECRET], { name: 'broken', data: broken })).rejects.toThrow(/disk read error/);
  });
});

describe('findLeaks: base64', () => {
  // Secrets whose encodings contain `+` and `/` (so base64url differs), of each length mod 3.
  const secrets = ['\u00fb\u00ff\u00be-k3y?>>', 'pa55>>>?word', 'ab?>~~~c'];

  it.each([0, 1, 2])('finds a secret embedded at byte alignment %i, standard and url-safe, split anywhere', async (k) => {
    for (const [index, secret] of secrets.entries()) {
      for (let pad = k; pad < k + 6; pad += 3) {
        const plain = buf(randomBytes(pad), secret, randomBytes(5));
        const std = plain.toString('base64');
        const url = plain.toString('base64url');
        expect(std).not.toEqual(url);
        for (const [form, text] of [['base64', std], ['base64url', url]] as const) {
          const data = buf('{"auth":"', text, '"}');
          const whole = await leaksIn(secrets, { name: 'config.json', data });
          expect(pick(whole), `${form} k=${k} pad=${pad} secret ${index}`).toContainEqual({ source: 'config.json', secret: index, form });
          for (let cut = 1; cut < data.length; cut += 3) {
            expect(pick(await leaksIn([secret], split('cut', data, [cut]))), `${form} cut ${cut}`).toContainEqual({ source: 'cut', secret: 0, form });
          }
        }
      }
    }
  });

  it('finds base64 wrapped at 76 columns (MIME, `base64` CLI), marked lineWrapped', async () => {
    for (let pad = 0; pad < 60; pad++) {
      const text = buf(randomBytes(pad), SECRET, randomBytes(60)).toString('base64').replace(/.{76}/g, '$&\r\n');
      const leaks = await leaksIn([SECRET], split('wrapped.txt', buf(text), [pad + 7]));
      expect(leaks.find((l) => l.form === 'base64'), `pad ${pad}`).toBeDefined();
    }
    const text = buf(randomBytes(50), SECRET).toString('base64');
    const wrapped = `${text.slice(0, 76)}\n${text.slice(76)}`;
    const [leak] = await leaksIn([SECRET], { name: 'w', data: buf(wrapped) });
    expect(leak).toEqual({ source: 'w', secret: 0, form: 'base64', count: 1, lineWrapped: true });
  });

  it('finds wrapped base64 whose first line break comes chunks after a long unbroken run (the wrapped search starts late)', async () => {
    const text = buf(randomBytes(50), SECRET).toString('base64');
    for (const at of [60, 70, 75, 80, 85]) {
      // ~10 KB without any line break, then the secret's base64 broken once, at `at`.
      const data = buf('x'.repeat(10_000), text.slice(0, at), '\n', text.slice(at));
      for (const cuts of [[], [5000, 10_010], [10_000 + at - 3], [10_000 + at], [10_000 + at + 1], Array.from({ length: 200 }, (_, i) => i * 51)]) {
        const leaks = await leaksIn([SECRET], split('late.txt', data, cuts));
        expect(leaks.find((l) => l.form === 'base64'), `break at ${at}, cuts ${cuts.length ? cuts.slice(0, 3).join(',') : 'none'}`).toBeDefined();
      }
    }
  });

  it('docker-login style: base64("user:secret") in a config.json', async () => {
    const auth = Buffer.from(`airlock:${SECRET}`).toString('base64');
    const leaks = await leaksIn([SECRET], { name: '.docker/config.json', data: buf(JSON.stringify({ auths: { 'registry.local': { auth } } })) });
    expect(pick(leaks)).toEqual([{ source: '.docker/config.json', secret: 0, form: 'base64' }]);
  });
});

describe('findLeaks: JSON-escaped and other forms', () => {
  const tricky = 'pa"ss\\word\nline2\ttab/slash<&>é😀';

  it('finds secrets with quotes, backslashes, newlines as JSON.stringify, Go, Python and PHP write them', async () => {
    const js = JSON.stringify({ password: tricky });
    const go = js.replace(/[<>&]/g, (c) => `\\u00${c.charCodeAt(0).toString(16)}`);
    const python = js.replace(/[\u0080-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
    const php = python.replace(/\//g, '\\/');
    const twice = JSON.stringify({ nested: js });
    for (const [name, text] of Object.entries({ js, go, python, php, twice })) {
      const data = buf('prefix ', text, ' suffix');
      expect(pick(await leaksIn([tricky], { name, data })), name).toEqual([{ source: name, secret: 0, form: 'json-escaped' }]);
      const cut = data.length >> 1;
      expect(pick(await leaksIn([tricky], split(name, data, [cut - 3, cut, cut + 5]))), `${name} split`).toEqual([{ source: name, secret: 0, form: 'json-escaped' }]);
    }
  });

  it('finds a secret with `<`, é and U+2028 as Go writes it with SetEscapeHTML(false): `<` and é as they are, U+2028 escaped (Go always escapes it)', async () => {
    const secret = 'pw<é\u2028line&sep';
    const goNoHtml = JSON.stringify({ password: secret }).replace(/\u2028/g, '\\u2028');
    expect(goNoHtml).toContain('pw<é\\u2028line&sep');
    expect(pick(await leaksIn([secret], { name: 'cfg', data: buf(goNoHtml) }))).toEqual([{ source: 'cfg', secret: 0, form: 'json-escaped' }]);
  });

  it('a secret that JSON does not change is reported raw, not twice', async () => {
    expect(pick(await leaksIn([SECRET], { name: 'j', data: buf(JSON.stringify({ SECRET })) }))).toEqual([{ source: 'j', secret: 0, form: 'raw' }]);
  });

  it('finds percent-encoded and hex forms', async () => {
    const s = 'p@ss word/with:colon';
    const leaks = await leaksIn(
      [s],
      { name: 'url', data: buf(`https://user:${encodeURIComponent(s)}@registry.local/`) },
      { name: 'form', data: buf(`password=${encodeURIComponent(s).replace(/%20/g, '+')}&x=1`) },
      { name: 'hex', data: buf(`dump ${Buffer.from(s).toString('hex').toUpperCase()}`) },
    );
    expect(pick(leaks)).toEqual([
      { source: 'url', secret: 0, form: 'url-encoded' },
      { source: 'form', secret: 0, form: 'url-encoded' },
      { source: 'hex', secret: 0, form: 'hex' },
    ]);
  });
});

describe('imageLayerSources on synthetic docker save archives', () => {
  const HEX = (c: string): string => c.repeat(64);

  async function sourcesOf(archive: Buffer): Promise<Map<string, string>> {
    const out = new Map<string, string>();
    for await (const s of imageLayerSources(Readable.from([archive]))) {
      const chunks: Buffer[] = [];
      if (s.data instanceof Uint8Array) chunks.push(Buffer.from(s.data));
      else for await (const c of s.data as AsyncIterable<Uint8Array>) chunks.push(Buffer.from(c));
      out.set(s.name, Buffer.concat(chunks).toString('utf8'));
    }
    return out;
  }

  it('legacy layout: plain and gzip\'d layer tars, the config JSON, manifest.json', async () => {
    const layer1 = await tarOf([{ name: 'etc/', type: 'directory' }, { name: 'etc/app.conf', body: `token=${SECRET}\n` }, { name: 'bin/sh', type: 'symlink', linkname: 'busybox' }]);
    const layer2 = gzipSync(await tarOf([{ name: 'srv/readme.txt', body: 'nothing here' }]));
    const config = JSON.stringify({ config: { Env: ['PATH=/bin', `API_TOKEN=${SECRET}`] }, rootfs: { type: 'layers', diff_ids: [] } });
    const archive = await tarOf([
      { name: `${HEX('a')}/`, type: 'directory' },
      { name: `${HEX('a')}/VERSION`, body: '1.0' },
      { name: `${HEX('a')}/layer.tar`, body: layer1 },
      { name: `${HEX('b')}/layer.tar`, body: layer2 },
      { name: `${HEX('c')}.json`, body: config },
      { name: 'manifest.json', body: JSON.stringify([{ Config: `${HEX('c')}.json`, Layers: [`${HEX('a')}/layer.tar`, `${HEX('b')}/layer.tar`] }]) },
    ]);
    const sources = await sourcesOf(archive);
    expect([...sources.keys()]).toEqual([
      `image ${HEX('a')}/VERSION`,
      `layer ${HEX('a')}:etc/app.conf`,
      `layer ${HEX('a')}:(entry names)`,
      `layer ${HEX('b')}:srv/readme.txt`,
      `layer ${HEX('b')}:(entry names)`,
      `config sha256:${HEX('c')}`,
      'image manifest.json',
    ]);
    expect(sources.get(`layer ${HEX('a')}:(entry names)`)).toBe('etc/\netc/app.conf\nbin/sh\nbusybox');
    expect(sources.get(`layer ${HEX('b')}:srv/readme.txt`)).toBe('nothing here');

    const leaks = await findLeaks([SECRET], imageLayerSources(Readable.from([archive])));
    expect(pick(leaks)).toEqual([
      { source: `layer ${HEX('a')}:etc/app.conf`, secret: 0, form: 'raw' },
      { source: `config sha256:${HEX('c')}`, secret: 0, form: 'raw' },
    ]);
  });

  it('OCI layout (Docker ≥ 25): blobs named by digest; a secret in a file name is found too', async () => {
    const layer = gzipSync(await tarOf([{ name: `tmp/${SECRET}.txt`, body: 'x' }]));
    const archive = await tarOf([
      { name: 'oci-layout', body: '{"imageLayoutVersion":"1.0.0"}' },
      { name: `blobs/sha256/${HEX('d')}`, body: layer },
      { name: `blobs/sha256/${HEX('e')}`, body: JSON.stringify({ config: { Env: [`T=${SECRET}`] } }) },
      { name: 'index.json', body: '{}' },
    ]);
    const leaks = await findLeaks([SECRET], imageLayerSources(Readable.from([archive])));
    expect(pick(leaks)).toEqual([
      { source: `layer sha256:${HEX('d')}:(entry names)`, secret: 0, form: 'raw' },
      { source: `blob sha256:${HEX('e')}`, secret: 0, form: 'raw' },
    ]);
  });

  it('perFile: false searches each layer as one raw tar: the same hits (contents, names, plain or gzip\'d), named by layer only', async () => {
    const plain = await tarOf([{ name: 'etc/app.conf', body: `key=${SECRET}\n` }, { name: 'srv/readme.txt', body: 'nothing here' }]);
    const named = gzipSync(await tarOf([{ name: `tmp/${SECRET}.txt`, body: 'x' }]));
    const clean = await tarOf([{ name: 'srv/ok.txt', body: 'ok' }]);
    const archive = await tarOf([
      { name: `blobs/sha256/${HEX('a')}`, body: plain },
      { name: `blobs/sha256/${HEX('b')}`, body: named },
      { name: `blobs/sha256/${HEX('c')}`, body: clean },
      { name: `blobs/sha256/${HEX('e')}`, body: JSON.stringify({ config: { Env: [`T=${SECRET}`] } }) },
    ]);
    const raw = await findLeaks([SECRET], imageLayerSources(Readable.from([archive]), { perFile: false }));
    expect(pick(raw)).toEqual([
      { source: `layer sha256:${HEX('a')}`, secret: 0, form: 'raw' },
      { source: `layer sha256:${HEX('b')}`, secret: 0, form: 'raw' },
      { source: `blob sha256:${HEX('e')}`, secret: 0, form: 'raw' },
    ]);
    const detailed = await findLeaks([SECRET], imageLayerSources(Readable.from([archive])));
    expect(pick(detailed).map((l) => l.source)).toEqual([`layer sha256:${HEX('a')}:etc/app.conf`, `layer sha256:${HEX('b')}:(entry names)`, `blob sha256:${HEX('e')}`]);
  });

  it('perFile: false finds a secret in a long path that a ustar header splits into prefix and name fields, in every chunking', async () => {
    // A path over 100 bytes is stored as prefix (offset 345) + name (offset 0), the `/` between
    // them dropped (Docker's Go archive/tar does this too): a secret holding a `/` is then in no
    // contiguous byte range of the layer's tar.
    const secret = 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY';
    const layer = await tarOf([{ name: 'srv/ok.txt', body: 'ok' }, { name: `${secret}/${'z'.repeat(80)}`, body: 'x' }, { name: 'srv/end.txt', body: 'end' }]);
    expect(layer.includes(secret)).toBe(false);
    expect(layer.subarray(512 + 512 + 345, 512 + 512 + 500).toString('latin1')).toMatch(/^wJalrXUtnFEMI\/K7MDENG\0/);
    for (const [how, blob] of [['plain', layer], ['gzip', gzipSync(layer)]] as const) {
      const archive = await tarOf([{ name: `blobs/sha256/${HEX('a')}`, body: blob }]);
      for (const size of [1, 100, 511, 512, 513, 4096, archive.length]) {
        const chunks = Array.from({ length: Math.ceil(archive.length / size) }, (_, k) => archive.subarray(k * size, (k + 1) * size));
        const raw = await findLeaks([secret], imageLayerSources(Readable.from(chunks), { perFile: false }));
        expect(pick(raw), `${how}, chunks of ${size}`).toEqual([{ source: `layer sha256:${HEX('a')}`, secret: 0, form: 'raw' }]);
      }
      const detailed = await findLeaks([secret], imageLayerSources(Readable.from([archive])));
      expect(pick(detailed), how).toEqual([{ source: `layer sha256:${HEX('a')}:(entry names)`, secret: 0, form: 'raw' }]);
    }
    // A layer without split paths gets nothing added.
    const plain = await tarOf([{ name: 'srv/ok.txt', body: 'ok' }]);
    const got: Buffer[] = [];
    for await (const s of imageLayerSources(Readable.from([await tarOf([{ name: `blobs/sha256/${HEX('b')}`, body: plain }])]), { perFile: false })) {
      for await (const c of s.data as AsyncIterable<Uint8Array>) got.push(Buffer.from(c));
    }
    expect(Buffer.concat(got).equals(plain)).toBe(true);
  });

  it('refuses a layer it cannot read (zstd) rather than passing it', async () => {
    const zstd = Buffer.concat([Buffer.from([0x28, 0xb5, 0x2f, 0xfd]), randomBytes(100)]);
    const archive = await tarOf([{ name: `blobs/sha256/${HEX('f')}`, body: zstd }]);
    const e = await findLeaks([SECRET], imageLayerSources(Readable.from([archive]))).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(InvalidInputError);
    expect((e as Error).message).toMatch(/zstd/);
  });

  it('a truncated archive fails the check', async () => {
    const layer = await tarOf([{ name: 'big', body: randomBytes(10_000) }]);
    const archive = await tarOf([{ name: `${HEX('a')}/layer.tar`, body: layer }]);
    await expect(findLeaks([SECRET], imageLayerSources(Readable.from([archive.subarray(0, 5_000)])))).rejects.toThrow();
  });
});

/**
 * Differential: findLeaks against a naive reference written here — every needle of every secret
 * searched with indexOf over the whole source (overlapping occurrences counted), and the base64
 * needles once more over the source with every CR and LF removed — on seeded random and
 * adversarial data fed in chunks of many sizes.
 */
describe('findLeaks against a naive reference', () => {
  /** A small seeded generator (mulberry32), so a failure names a case that can be replayed. */
  function rng(seed: number): () => number {
    let a = seed >>> 0;
    return () => {
      a = (a + 0x6d2b79f5) >>> 0;
      let t = a;
      t = Math.imul(t ^ (t >>> 15), t | 1);
      t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
  }

  function occurrences(hay: Buffer, needle: Buffer): { count: number; first: number } {
    let count = 0;
    let first = -1;
    for (let at = hay.indexOf(needle); at >= 0; at = hay.indexOf(needle, at + 1)) {
      count++;
      if (first < 0) first = at;
    }
    return { count, first };
  }

  const FORM_ORDER = ['raw', 'json-escaped', 'url-encoded', 'base64', 'base64url', 'hex'];

  function reference(secrets: string[], name: string, data: Buffer): Leak[] {
    const stripped = Buffer.from([...data].filter((b) => b !== 10 && b !== 13));
    const found = new Map<string, Leak>();
    const seen = new Set<string>();
    secrets.forEach((secret, index) => {
      if ([...secret].length < MIN_SECRET_LENGTH || seen.has(secret)) return;
      seen.add(secret);
      for (const { form, bytes } of needlesOf(secret)) {
        const { count, first } = occurrences(data, bytes);
        if (count === 0) continue;
        const key = `${index}\0${form}`;
        const prev = found.get(key);
        if (prev) {
          prev.count += count;
          prev.offset = Math.min(prev.offset!, first);
        } else found.set(key, { source: name, secret: index, form, offset: first, count });
      }
    });
    seen.clear();
    secrets.forEach((secret, index) => {
      if ([...secret].length < MIN_SECRET_LENGTH || seen.has(secret)) return;
      seen.add(secret);
      for (const { form, bytes } of needlesOf(secret)) {
        if (form !== 'base64' && form !== 'base64url') continue;
        const key = `${index}\0${form}`;
        if (found.has(key) && !found.get(key)!.lineWrapped) continue;
        const { count } = occurrences(stripped, bytes);
        if (count === 0) continue;
        const prev = found.get(key);
        if (prev) prev.count += count;
        else found.set(key, { source: name, secret: index, form, count, lineWrapped: true });
      }
    });
    return [...found.values()].sort((x, y) => x.secret - y.secret || FORM_ORDER.indexOf(x.form) - FORM_ORDER.indexOf(y.form));
  }

  /** `data` cut into chunks: each of `sizes` in turn, or one random size in [1, max] per chunk. */
  function chunked(data: Buffer, next: () => number): Buffer[] {
    const out: Buffer[] = [];
    for (let at = 0; at < data.length; ) {
      const n = Math.max(1, next());
      out.push(data.subarray(at, at + n));
      at += n;
    }
    return out;
  }

  const SECRETS = [
    SECRET,
    'abcabcabc', // overlaps itself
    'aaaaaaa',
    'Zm9vYmFyYmF6', // already base64: its raw form is base64 text too
    `long-secret-${'x'.repeat(20)}-${'0123456789'.repeat(3)}`, // > 32 bytes: compared past the automaton's prefix
    'p@ss w/rd"é<&>', // JSON, URL and hex forms differ
    '\u00fb\u00ff\u00be-k3y?>>', // base64 with + and /, base64url with - and _
  ];
  const B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/-_';

  /** A source built from secret forms, their fragments, base64 text wrapped at random, line breaks and noise. */
  function sample(r: () => number, secrets: string[]): Buffer {
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;
    const parts: Buffer[] = [];
    const pieces = 1 + Math.floor(r() * 24);
    for (let i = 0; i < pieces; i++) {
      const secret = Buffer.from(pick(secrets), 'utf8');
      const needles = needlesOf(pick(secrets));
      switch (Math.floor(r() * 9)) {
        case 0:
          parts.push(secret);
          break;
        case 1:
          parts.push(pick(needles).bytes);
          break;
        case 2: {
          // A needle cut short, or two overlapping halves.
          const n = pick(needles).bytes;
          const cut = Math.floor(r() * n.length);
          parts.push(r() < 0.5 ? n.subarray(0, cut) : Buffer.concat([n.subarray(0, cut), n.subarray(Math.floor(cut / 2))]));
          break;
        }
        case 3:
        case 4: {
          // The secret inside base64 (either alphabet), wrapped with LF or CR/LF at a random column
          // or at random places, sometimes with a stray byte that ends the base64 run.
          let text = Buffer.concat([randomBytes(Math.floor(r() * 7)), secret, randomBytes(Math.floor(r() * 7))]).toString(r() < 0.5 ? 'base64' : 'base64url');
          const brk = pick(['\n', '\r\n', '\r', '\n\n', '\r\n\r\n']);
          if (r() < 0.5) {
            const col = 1 + Math.floor(r() * 20);
            text = text.replace(new RegExp(`.{${col}}`, 'g'), `$&${brk}`);
          } else {
            for (let k = Math.floor(r() * 6); k > 0; k--) {
              const at = Math.floor(r() * text.length);
              text = text.slice(0, at) + pick([brk, brk, brk, ' ', '\0']) + text.slice(at);
            }
          }
          parts.push(Buffer.from(text, 'latin1'));
          break;
        }
        case 5:
          parts.push(Buffer.from(pick(['\n', '\r', '\r\n', '\n\n\n'])));
          break;
        case 6:
          parts.push(Buffer.from(Array.from({ length: Math.floor(r() * 200) }, () => pick([...B64])).join(''), 'latin1'));
          break;
        case 7:
          parts.push(randomBytes(Math.floor(r() * 300)));
          break;
        default:
          parts.push(Buffer.alloc(Math.floor(r() * 3000), pick([0, 0x41, 0x0a])));
      }
    }
    return Buffer.concat(parts);
  }

  it('equals the reference on 200 seeded sources, each in whole, in single bytes and in random chunk sizes', async () => {
    let wrappedHits = 0;
    let plainHits = 0;
    for (let seed = 1; seed <= 200; seed++) {
      const r = rng(seed);
      const secrets = SECRETS.filter(() => r() < 0.6);
      if (secrets.length === 0) secrets.push(SECRET);
      const data = sample(r, secrets);
      const want = reference(secrets, 's', data);
      wrappedHits += want.filter((l) => l.lineWrapped).length;
      plainHits += want.filter((l) => !l.lineWrapped).length;
      const max = 1 + Math.floor(r() * 100);
      const cuts: [string, Buffer[]][] = [
        ['whole', [data]],
        [`random ≤ ${max}`, chunked(data, () => Math.ceil(r() * max))],
        ['sizes 31/32/33', chunked(data, (() => { let k = 0; return () => [31, 32, 33][k++ % 3]!; })())],
      ];
      if (data.length < 4000) cuts.push(['bytes', chunked(data, () => 1)]);
      for (const [how, chunks] of cuts) {
        expect(await findLeaks(secrets, [{ name: 's', data: Readable.from(chunks) }]), `seed ${seed}, ${how}`).toEqual(want);
      }
    }
    // The data must exercise both kinds of hit for this test to mean anything.
    expect(wrappedHits).toBeGreaterThan(100);
    expect(plainHits).toBeGreaterThan(300);
  });

  /**
   * Secrets an attacker would hope to slip past: 6 characters (the shortest searched), prefixes of
   * one another, around the automaton's 32-byte prefix, several KB (a key), with characters JSON
   * and URLs escape, with `+` and `/` in their base64, self-overlapping.
   */
  function hostileSecrets(r: () => number): string[] {
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;
    const word = (alphabet: string, n: number): string => Array.from({ length: n }, () => pick([...alphabet])).join('');
    const out: string[] = [];
    for (let k = 1 + Math.floor(r() * 4); k > 0; k--) {
      const alphabet = pick([B64.slice(0, 64), 'ab', 'a', 'xyz01', 'p@s w/d"\\<&>é\n+%', '\u00fb\u00ff\u00be?>~-_']);
      const s = word(alphabet, pick([6, 6, 7, 9, 31, 32, 33, 34, 65, 2000, 4500]));
      out.push(s);
      if (r() < 0.4) out.push(r() < 0.5 ? s.slice(0, Math.max(6, s.length >> 1)) : s + word(alphabet, 1 + Math.floor(r() * 40)));
    }
    return out;
  }

  /**
   * A source from those secrets: their needles whole, cut, overlapping (one starting inside the
   * other) and repeated; their base64 and base64url inside random bytes, wrapped at 1 to 80 columns
   * or broken at random with LF, CRLF, CR alone or runs of them, with `=`, `-`, `_`, `+`, `/` and
   * other bytes next to the breaks; long base64 runs and break runs; noise.
   */
  function hostileSample(r: () => number, secrets: string[]): Buffer {
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;
    const bytes = (n: number): Buffer => Buffer.from(Array.from({ length: n }, () => Math.floor(r() * 256)));
    const breaks = ['\n', '\r\n', '\r', '\n\n', '\r\n\r\n', '\n\r', '\r\r\r\n'];
    const parts: Buffer[] = [];
    for (let i = 1 + Math.floor(r() * 12); i > 0; i--) {
      const secret = Buffer.from(pick(secrets), 'utf8');
      const needle = pick(needlesOf(pick(secrets))).bytes;
      const other = pick(needlesOf(pick(secrets))).bytes;
      switch (Math.floor(r() * 10)) {
        case 0:
          parts.push(pick([secret, needle]));
          break;
        case 1: // overlapping: a needle, then another that starts inside it, or a needle repeated from inside itself
          parts.push(Buffer.concat([needle.subarray(0, Math.floor(r() * (needle.length + 1))), pick([other, needle])]));
          break;
        case 2:
          parts.push(Buffer.concat([needle, needle.subarray(Math.floor(r() * needle.length))]));
          break;
        case 3:
        case 4:
        case 5: {
          let text = Buffer.concat([bytes(Math.floor(r() * 100)), secret, bytes(Math.floor(r() * 100))]).toString(r() < 0.5 ? 'base64' : 'base64url');
          if (r() < 0.3) text = text.replace(/=+$/, '');
          const brk = pick(breaks);
          const how = Math.floor(r() * 3);
          if (how === 0) text = text.replace(new RegExp(`.{${1 + Math.floor(r() * (r() < 0.5 ? 6 : 80))}}`, 'gs'), (m) => m + (r() < 0.8 ? brk : pick(breaks)));
          else {
            const stray = how === 1 ? breaks : [...breaks, '=', '==', '-', '_', '+', '/', ' ', '\0', '.'];
            for (let k = Math.floor(r() * 10); k > 0; k--) {
              const at = Math.floor(r() * text.length);
              text = text.slice(0, at) + pick(stray) + text.slice(at);
            }
          }
          parts.push(Buffer.from(text, 'latin1'));
          break;
        }
        case 6:
          parts.push(Buffer.from(pick(breaks).repeat(1 + Math.floor(r() * 3))));
          break;
        case 7:
          parts.push(Buffer.from(Array.from({ length: Math.floor(r() * 400) }, () => pick([...B64])).join(''), 'latin1'));
          break;
        case 8: {
          // The longest wrapped needle (the reach of the regions) broken once, one byte from an end or
          // anywhere, inside base64 runs longer than it on both sides.
          const longest = secrets.flatMap((x) => needlesOf(x)).filter((n) => n.form === 'base64' || n.form === 'base64url').reduce<Buffer>((a, n) => (n.bytes.length > a.length ? n.bytes : a), Buffer.alloc(0));
          const at = pick([1, longest.length - 1, Math.floor(r() * longest.length)]);
          const run = (): Buffer => Buffer.from(Array.from({ length: longest.length + Math.floor(r() * 8) }, () => pick([...B64.slice(0, 64)])).join(''), 'latin1');
          parts.push(Buffer.concat([run(), longest.subarray(0, at), Buffer.from(pick(breaks)), longest.subarray(at), run()]));
          break;
        }
        default:
          parts.push(r() < 0.5 ? bytes(Math.floor(r() * 300)) : Buffer.alloc(Math.floor(r() * 3000), pick([0, 0x41, 0x0a, 0x0d])));
      }
    }
    return Buffer.concat(parts);
  }

  it('equals the reference on hostile secrets and sources, cut at 1, 31/32/33, random sizes, at every line break and whole', async () => {
    let wrappedHits = 0;
    let plainHits = 0;
    for (let seed = 1; seed <= 150; seed++) {
      const r = rng(1_000_000 + seed);
      const secrets = hostileSecrets(r);
      const data = hostileSample(r, secrets);
      const want = reference(secrets, 's', data);
      wrappedHits += want.filter((l) => l.lineWrapped).length;
      plainHits += want.filter((l) => !l.lineWrapped).length;
      // Chunk boundaries right before and right after every CR/LF byte.
      const atBreaks = [...data.keys()].filter((i) => data[i] === 10 || data[i] === 13).flatMap((i) => [i, i + 1]);
      const cutAt = (cuts: number[]): Buffer[] => [0, ...cuts].map((from, k) => data.subarray(from, k < cuts.length ? cuts[k] : data.length)).filter((c) => c.length > 0);
      const max = 1 + Math.floor(r() * 300);
      const cuts: [string, Buffer[]][] = [
        ['whole', [data]],
        [`random ≤ ${max}`, chunked(data, () => Math.ceil(r() * max))],
        ['sizes 31/32/33', chunked(data, (() => { let k = 0; return () => [31, 32, 33][k++ % 3]!; })())],
        ['at the breaks', cutAt([...new Set(atBreaks)])],
      ];
      if (data.length < 3000) cuts.push(['bytes', chunked(data, () => 1)]);
      for (const [how, chunks] of cuts) {
        expect(await findLeaks(secrets, [{ name: 's', data: Readable.from(chunks) }]), `seed ${1_000_000 + seed}, ${how}`).toEqual(want);
      }
    }
    // The data must exercise both kinds of hit (134 line-wrapped and 379 plain as written).
    expect(wrappedHits).toBeGreaterThan(100);
    expect(plainHits).toBeGreaterThan(300);
  });

  it('equals the reference when the source refills one buffer for every chunk it yields', async () => {
    async function* refilled(chunks: Buffer[]): AsyncGenerator<Uint8Array> {
      const one = Buffer.alloc(Math.max(1, ...chunks.map((c) => c.length)));
      for (const c of chunks) {
        c.copy(one);
        yield one.subarray(0, c.length);
      }
      one.fill(0x41);
    }
    let wrappedHits = 0;
    for (let seed = 1; seed <= 20; seed++) {
      const r = rng(2_000_000 + seed);
      const secrets = hostileSecrets(r);
      const data = hostileSample(r, secrets);
      const want = reference(secrets, 's', data);
      wrappedHits += want.filter((l) => l.lineWrapped).length;
      for (const size of [1, 33, 200]) {
        if (size === 1 && data.length > 3000) continue;
        expect(await findLeaks(secrets, [{ name: 's', data: refilled(chunked(data, () => size)) }]), `seed ${2_000_000 + seed}, chunks of ${size}`).toEqual(want);
      }
    }
    expect(wrappedHits).toBeGreaterThan(5); // 10 as written
  });

  it('equals the reference on adversarial layouts: breaks at every offset of a wrapped needle, break runs, long runs before the first break', async () => {
    const long = SECRETS[4]!;
    let cases = 0;
    let wrappedCases = 0;
    for (const secret of [SECRET, long, 'abcabcabc']) {
      for (const alphabet of ['base64', 'base64url'] as const) {
        for (let pad = 0; pad < 3; pad++) {
          const text = Buffer.concat([randomBytes(pad), Buffer.from(secret), randomBytes(4)]).toString(alphabet);
          for (let at = 1; at < text.length; at++) {
            {
              const brk = ['\n', '\r\n', '\n\r\n\n'][at % 3]!;
              // A run of base64 characters longer than the longest needle before the break, and a
              // second wrapped copy after non-base64 bytes: two separate regions, one chunking each.
              const wrapped = `${text.slice(0, at)}${brk}${text.slice(at)}`;
              const data = Buffer.from(`${'A'.repeat(at % 2 ? 2000 : 10)}${wrapped}\0\0${'B'.repeat(at % 3)}${wrapped}`, 'latin1');
              const want = reference([secret], 'a', data);
              if (want.some((l) => l.lineWrapped)) wrappedCases++;
              cases++;
              for (const size of at % 2 ? [7, at + 1, 64, 1 << 16] : [1, 7, at + 1, 64]) {
                expect(await findLeaks([secret], [{ name: 'a', data: Readable.from(chunked(data, () => size)) }]), `${secret} ${alphabet} pad ${pad} break at ${at}, chunks of ${size}`).toEqual(want);
              }
            }
          }
        }
      }
    }
    // Most breaks fall inside a needle (the rest are in the filler around it).
    expect(wrappedCases).toBeGreaterThan(cases * 0.6);
  });
});
