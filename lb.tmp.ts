import { randomBytes } from 'node:crypto';
import { findLeaks } from './trusted-builder/secrets/leak-check.js';
const secrets = ['bench-hint-secret-of-some-length', 'registry-password-xyz123', '-----BEGIN PGP PRIVATE KEY BLOCK-----\n' + randomBytes(2000).toString('base64')];
const zeros = Buffer.alloc(8 << 20);
const rnd = randomBytes(8 << 20);
const text = Buffer.from(randomBytes(6 << 20).toString('base64').replace(/(.{76})/g, '$1\n'));
for (const [name, buf] of [['zeros', zeros], ['random', rnd], ['b64text', text]] as const) {
  const chunks = []; for (let i = 0; i < buf.length; i += 65536) chunks.push(buf.subarray(i, i + 65536));
  for (let k = 0; k < 3; k++) { const t0 = performance.now(); await findLeaks(secrets, [{ name, data: (async function*(){ yield* chunks; })() }]); if (k===2) console.log(name, (buf.length/1048576).toFixed(1)+'MB', Math.round(performance.now()-t0)+'ms'); }
}
