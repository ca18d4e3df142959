/**
 * Embargo requests and answers in OpenPGP, both sides (the wire format is in wire.ts):
 * - client: `makeRequest` signs a request with the member's key and encrypts it to the builder's
 *   embargo key; `openResponse` decrypts the answer with the member's key, requires the builder's
 *   signature and checks that it answers this request's nonce.
 * - builder: `openRequest` decrypts with the embargo key and admits the request only when it
 *   carries exactly one signature, by a current team member, valid; its JSON is an
 *   `EmbargoRequest`; `issuedAt` and the signature's time are within ±5 minutes of the builder's
 *   clock; and the member never used its nonce (durably, NonceStore). `sealResponse` encrypts the
 *   answer to that member alone and signs it.
 *
 * `openRequest` never throws on what a client sent: it answers a typed refusal whose `detail` is
 * safe to log (no request content).
 */
import { randomBytes } from 'node:crypto';
import * as openpgp from 'openpgp';
import { InternalError, InvalidInputError } from '#shared/errors.js';
import { parseOrThrow } from '#shared/schemas/issues.js';
import type { EmbargoKey } from './embargo-key.js';
import type { NonceStore } from './nonce-store.js';
import type { SecurityTeam, TeamMember } from './team.js';
import { EMBARGO_REQUEST_WINDOW_MS, EMBARGO_WIRE_VERSION, EmbargoRequest, EmbargoResponse, MAX_DECOMPRESSED_ANSWER_BYTES, MAX_DECOMPRESSED_REQUEST_BYTES, type EmbargoAsk } from './wire.js';

export type RequestRefusalReason =
  /** Not an armored OpenPGP message, not encrypted to the embargo key, or tampered with. */
  | 'undecryptable'
  /** Decrypts, but carries no signature. */
  | 'unsigned'
  /** Signed by a key that is not a current team member's. */
  | 'not-a-member'
  /** Signed by a member's key id, but the signature does not verify (or there is more than one). */
  | 'bad-signature'
  /** A member's valid signature over something that is not an `EmbargoRequest`. */
  | 'malformed'
  /** `issuedAt` or the signature's time is outside the window. */
  | 'expired'
  /** This member already used this nonce. */
  | 'replayed';

export interface RequestRefusal {
  ok: false;
  reason: RequestRefusalReason;
  /** 400: we cannot read it at all; 401: read, but not admitted. */
  status: 400 | 401;
  /** Safe to log: no request content. */
  detail: string;
  /** The signer's key id (uppercase hex), when there is one. */
  keyId?: string;
  /** The member, when the signature was theirs. */
  member?: TeamMember;
}

export interface OpenedRequest {
  ok: true;
  request: EmbargoRequest;
  member: TeamMember;
}

export interface OpenRequestContext {
  key: EmbargoKey;
  team: SecurityTeam;
  nonces: NonceStore;
  /** The builder's clock, ms. */
  now: number;
  windowMs?: number;
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** A request for `ask`, signed by `memberKey` and encrypted to `builderKey`, armored. */
export async function makeRequest(
  ask: EmbargoAsk,
  o: { memberKey: openpgp.PrivateKey; builderKey: openpgp.PublicKey; now?: Date; nonce?: string },
): Promise<{ armored: string; request: EmbargoRequest }> {
  const now = o.now ?? new Date();
  const request = parseOrThrow(EmbargoRequest, { ...ask, version: EMBARGO_WIRE_VERSION, issuedAt: now.toISOString(), nonce: o.nonce ?? randomBytes(24).toString('base64url') }, 'embargo request');
  const message = await openpgp.createMessage({ binary: Buffer.from(JSON.stringify(request), 'utf8'), date: now });
  const armored = await openpgp.encrypt({ message, encryptionKeys: o.builderKey, signingKeys: o.memberKey, date: now, format: 'armored' });
  return { armored, request };
}

/** Decrypt, authenticate and parse a request; see the module comment for what is admitted. */
export async function openRequest(armored: string, ctx: OpenRequestContext): Promise<OpenedRequest | RequestRefusal> {
  const windowMs = ctx.windowMs ?? EMBARGO_REQUEST_WINDOW_MS;
  const refuse = (reason: RequestRefusalReason, detail: string, who: { keyId?: string; member?: TeamMember } = {}): RequestRefusal => ({
    ok: false,
    reason,
    status: reason === 'undecryptable' || reason === 'malformed' ? 400 : 401,
    detail,
    ...who,
  });
  let decrypted: openpgp.DecryptMessageResult & { data: Uint8Array };
  try {
    // Decompression is bounded: the signature sits inside the encrypted, compressed data, so it
    // cannot be checked first, and an anonymous sender must not inflate the builder's memory.
    const config = { maxDecompressedMessageSize: MAX_DECOMPRESSED_REQUEST_BYTES };
    const message = await openpgp.readMessage({ armoredMessage: armored, config });
    // Verified as of the far end of the window: a member whose clock runs a little ahead is not
    // refused by openpgp for a "signature from the future"; the time is checked below instead.
    decrypted = await openpgp.decrypt({ message, decryptionKeys: ctx.key.privateKey, verificationKeys: ctx.team.keys, format: 'binary', date: new Date(ctx.now + windowMs), config });
  } catch {
    return refuse('undecryptable', 'not an OpenPGP message encrypted to the embargo key, or altered, or larger than allowed once decompressed');
  }
  const [signature, ...more] = decrypted.signatures;
  if (!signature) return refuse('unsigned', 'the message is not signed');
  const keyId = signature.keyID.toHex().toUpperCase();
  const member = ctx.team.memberFor(signature.keyID);
  if (!member) return refuse('not-a-member', 'signed by a key that is not a security team member', { keyId });
  if (more.length > 0) return refuse('bad-signature', `${decrypted.signatures.length} signatures; a request carries exactly one`, { keyId, member });
  const off = (t: number): string | undefined => (Math.abs(ctx.now - t) <= windowMs ? undefined : `${Math.round(Math.abs(ctx.now - t) / 1000)} s ${t < ctx.now ? 'old' : 'ahead'}`);
  // The time first (the claim is only trusted once the signature verifies, below): a signature
  // from far outside the window is "expired", not "bad".
  const signedAt = await signature.signature.then((sig) => sig.packets[0]?.created ?? undefined).catch(() => undefined);
  if (!signedAt || off(signedAt.getTime())) return refuse('expired', `the signature is ${signedAt ? off(signedAt.getTime()) : 'undated'}, outside the ±${windowMs / 1000} s window`, { keyId, member });
  try {
    await signature.verified;
  } catch {
    return refuse('bad-signature', "the signature does not verify with the member's key", { keyId, member });
  }

  let request: EmbargoRequest;
  try {
    const parsed = EmbargoRequest.safeParse(JSON.parse(utf8.decode(decrypted.data)) as unknown);
    if (!parsed.success) return refuse('malformed', `not an embargo request: ${parsed.error.issues[0]?.path.join('.') || '(root)'}: ${parsed.error.issues[0]?.message ?? 'invalid'}`, { keyId, member });
    request = parsed.data;
  } catch {
    return refuse('malformed', 'not UTF-8 JSON', { keyId, member });
  }
  const issuedAt = Date.parse(request.issuedAt);
  const stale = off(issuedAt);
  if (stale) return refuse('expired', `issued ${stale}, outside the ±${windowMs / 1000} s window`, { keyId, member });
  if (!ctx.nonces.admit(member.fingerprint, request.nonce, issuedAt + windowMs, ctx.now)) return refuse('replayed', 'this nonce was already used', { keyId, member });
  return { ok: true, request, member };
}

/** The answer for `member`: encrypted to their key alone, signed by the embargo key, armored. */
export async function sealResponse(response: EmbargoResponse, key: EmbargoKey, member: TeamMember, now = new Date()): Promise<string> {
  const message = await openpgp.createMessage({ binary: Buffer.from(JSON.stringify(EmbargoResponse.parse(response)), 'utf8'), date: now });
  return openpgp.encrypt({ message, encryptionKeys: member.key, signingKeys: key.privateKey, date: now, format: 'armored' });
}

/**
 * The builder's answer to the request with `nonce`: decrypted with the member's key; it must be
 * signed by `builderKey` and name that nonce. Anything else is an InternalError (the answer cannot
 * be trusted), never a partial result.
 */
export async function openResponse(armored: string, o: { memberKey: openpgp.PrivateKey; builderKey: openpgp.PublicKey; nonce: string; now?: Date }): Promise<EmbargoResponse> {
  const now = o.now ?? new Date();
  let data: Uint8Array;
  try {
    const config = { maxDecompressedMessageSize: MAX_DECOMPRESSED_ANSWER_BYTES };
    const message = await openpgp.readMessage({ armoredMessage: armored, config });
    const r = await openpgp.decrypt({ message, decryptionKeys: o.memberKey, verificationKeys: o.builderKey, expectSigned: true, format: 'binary', date: new Date(now.getTime() + EMBARGO_REQUEST_WINDOW_MS), config });
    data = r.data;
  } catch (e) {
    throw new InternalError(`the builder's answer does not decrypt with this key or is not signed by the builder key: ${(e as Error).message}`);
  }
  let response: EmbargoResponse;
  try {
    response = EmbargoResponse.parse(JSON.parse(utf8.decode(data)) as unknown);
  } catch (e) {
    throw new InternalError(`the builder's answer is not one this airlock understands: ${e instanceof Error ? e.message.slice(0, 300) : String(e)}`);
  }
  if (response.inReplyTo !== o.nonce) throw new InternalError("the builder's answer is for another request (its nonce differs): refusing it");
  return response;
}

/** The builder's public embargo key as given to a client (`--builder-key`). */
export async function readBuilderKey(armored: string, source: string): Promise<openpgp.PublicKey> {
  try {
    const key = await openpgp.readKey({ armoredKey: armored });
    const pub = key.toPublic();
    await pub.getEncryptionKey();
    return pub;
  } catch (e) {
    throw new InvalidInputError([{ file: source, path: '', message: `not a usable OpenPGP public key of the builder: ${(e as Error).message}`, severity: 'error' }]);
  }
}
