/**
 * The embargo lane's wire format (docs/conventions.md "Parse at the edge": the schemas alone, in one file). Both directions are
 * JSON inside OpenPGP; nothing about an embargo crosses the wire in clear.
 *
 * Request: `POST /v1/embargo`, body = one ASCII-armored OpenPGP message, encrypted to the builder's
 * embargo key and signed (inside the encryption) by exactly one security team member. Its literal
 * data is UTF-8 JSON, an `EmbargoRequest`: `{version: 1, action, issuedAt, nonce, …}` with the
 * fields its action needs (`submit`: project + patch; `list`: project?; `show`/`logs`/`artifacts`:
 * id; `retire`: id + reason?; `replace`: id + patch; `rebuild`: id). `artifacts` answers the last patched image's signature and
 * provenance (what `airlock embargo verify` checks). `issuedAt` must be within ±5 minutes of the builder's clock, and a
 * member's `nonce` is accepted once.
 *
 * Answer to an authenticated request: 200, `application/pgp-encrypted`, one armored OpenPGP
 * message encrypted to the requesting member's key only and signed by the builder's embargo key;
 * its JSON is an `EmbargoResponse` naming the request's nonce in `inReplyTo`. Errors about the
 * request's content (unknown id, a patch that is not a diff) are inside it (`ok: false`), so even
 * the status code says nothing about an embargo. A request that is not authenticated gets a plain
 * 400 (not an OpenPGP message we can decrypt) or 401 (not signed by a member, expired, replayed)
 * with the same fixed message.
 */
import { z } from 'zod';
import { ProjectName, Sha } from '#shared/schemas/events/trigger.js';

export const EMBARGO_WIRE_VERSION = 1;
/** How far `issuedAt` (and the signature's time) may be from the builder's clock, either side. */
export const EMBARGO_REQUEST_WINDOW_MS = 5 * 60_000; // 5 min
/** A security fix is a few KiB; a MiB is generous. */
export const MAX_PATCH_BYTES = 1024 * 1024; // 1 MiB
/** The armored request: the patch, base64 (4/3), armor lines and the OpenPGP packets around it. */
export const MAX_EMBARGO_REQUEST_BYTES = 2 * MAX_PATCH_BYTES; // 2 MiB
/** `logs` answers with the last this many bytes of an embargo's log (and says so). */
export const MAX_LOG_ANSWER_BYTES = 4 * 1024 * 1024; // 4 MiB
/**
 * What a request may decompress to at most (openpgp's `maxDecompressedMessageSize`, unlimited by
 * default): the request itself is at most MAX_EMBARGO_REQUEST_BYTES, and a patch hardly
 * compresses; anything beyond is a decompression bomb, refused before it is inflated further.
 */
export const MAX_DECOMPRESSED_REQUEST_BYTES = 2 * MAX_EMBARGO_REQUEST_BYTES; // 4 MiB
/** The same for an answer the CLI reads (logs are capped at MAX_LOG_ANSWER_BYTES, then JSON and base64). */
export const MAX_DECOMPRESSED_ANSWER_BYTES = 4 * MAX_LOG_ANSWER_BYTES; // 16 MiB
const MAX_REASON_CHARS = 2000;

/** `emb-` and 16 random hex digits: an embargo's only name outside the encrypted store. */
export const EmbargoId = z.string().regex(/^emb-[0-9a-f]{16}$/, 'not an embargo id (emb- and 16 hex digits)');
export const Nonce = z.string().regex(/^[A-Za-z0-9_-]{16,128}$/, 'not a nonce (16-128 of A-Z a-z 0-9 _ -)');
/** `sha256:` and the hex sha256 of the patch's UTF-8 bytes. */
export const PatchDigest = z.string().regex(/^sha256:[0-9a-f]{64}$/, 'not a sha256 digest');
const Time = z.iso.datetime();
const Reason = z.string().min(1).max(MAX_REASON_CHARS);

/** A unified diff (`git diff`, `git format-patch` or `diff -u`), as UTF-8 text. */
export const PatchText = z
  .string()
  .min(1)
  .refine((p) => Buffer.byteLength(p, 'utf8') <= MAX_PATCH_BYTES, `larger than ${MAX_PATCH_BYTES} bytes`)
  .refine((p) => !p.includes('\0'), 'holds a NUL byte: send a text diff (binary files as git binary patches)')
  .refine((p) => /^diff --git /m.test(p) || (/^--- /m.test(p) && /^\+\+\+ /m.test(p)), 'not a unified diff (no "diff --git" or "---"/"+++" lines)');

const RequestBase = { version: z.literal(EMBARGO_WIRE_VERSION), issuedAt: Time, nonce: Nonce };
export const EmbargoRequest = z.discriminatedUnion('action', [
  z.strictObject({ ...RequestBase, action: z.literal('submit'), project: ProjectName, patch: PatchText }),
  z.strictObject({ ...RequestBase, action: z.literal('list'), project: ProjectName.optional() }),
  z.strictObject({ ...RequestBase, action: z.literal('show'), id: EmbargoId }),
  z.strictObject({ ...RequestBase, action: z.literal('retire'), id: EmbargoId, reason: Reason.optional() }),
  z.strictObject({ ...RequestBase, action: z.literal('logs'), id: EmbargoId }),
  z.strictObject({ ...RequestBase, action: z.literal('artifacts'), id: EmbargoId }),
  z.strictObject({ ...RequestBase, action: z.literal('replace'), id: EmbargoId, patch: PatchText }),
  z.strictObject({ ...RequestBase, action: z.literal('rebuild'), id: EmbargoId }),
]);
export type EmbargoRequest = z.infer<typeof EmbargoRequest>;
export type EmbargoAction = EmbargoRequest['action'];
/** What a client fills in; `makeRequest` adds version, issuedAt and nonce. */
export type EmbargoAsk = DistributiveOmit<EmbargoRequest, 'version' | 'issuedAt' | 'nonce'>;
type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;

export const RetiredInfo = z.strictObject({ at: Time, by: z.string().max(200), reason: Reason });
export type RetiredInfo = z.infer<typeof RetiredInfo>;
/**
 * Why a private build left an embargo without a patched image: its patch no longer applies
 * (`apply`), another patch of the set does not (`blocked`: this one is fine), the patched tests or
 * build failed (`tests`, `build`), or the lane itself failed (`internal`).
 */
export const BreakStep = z.enum(['apply', 'blocked', 'tests', 'build', 'internal']);
export type BreakStep = z.infer<typeof BreakStep>;
/** A public commit the patch no longer applies to, or whose patched tests fail (`step`: absent in breaks recorded before it existed). */
export const BreakInfo = z.strictObject({ at: Time, commit: Sha, step: BreakStep.optional(), reason: z.string().max(MAX_REASON_CHARS) });
export type BreakInfo = z.infer<typeof BreakInfo>;
/** A patched (private) image produced for a public commit: its reference and manifest digest. */
export const BuildInfo = z.strictObject({ at: Time, commit: Sha, reference: z.string().min(1).max(500), digest: z.string().regex(/^sha256:[0-9a-f]{64}$/, 'not a sha256 digest') });
export type BuildInfo = z.infer<typeof BuildInfo>;
/** A patch an embargo carried before `replace` (its digest), who replaced it and when. */
export const ReplacedInfo = z.strictObject({ at: Time, by: z.string().max(200), digest: PatchDigest });
export type ReplacedInfo = z.infer<typeof ReplacedInfo>;
export const ArtifactInfo = z.strictObject({ name: z.string().min(1).max(200), size: z.number().int().min(0), sha256: z.string().regex(/^[0-9a-f]{64}$/), at: Time });
export type ArtifactInfo = z.infer<typeof ArtifactInfo>;

/**
 * The artifacts a private build leaves with each embargo it carried (`show` lists them, `verify`
 * fetches them): the image's simple-signing signature, its provenance statement and that
 * statement's detached signature, as the private lookaside holds them.
 */
export const PRIVATE_ARTIFACTS = ['image.signature', 'provenance.json', 'provenance.json.asc'] as const;

export const EmbargoState = z.enum(['active', 'retired']);
export type EmbargoState = z.infer<typeof EmbargoState>;

export const EmbargoSummary = z.strictObject({
  id: EmbargoId,
  project: ProjectName,
  digest: PatchDigest,
  state: EmbargoState,
  submittedBy: z.string().max(200),
  submittedAt: Time,
  retired: RetiredInfo.optional(),
  lastBreak: BreakInfo.optional(),
  lastBuild: BuildInfo.optional(),
});
export type EmbargoSummary = z.infer<typeof EmbargoSummary>;

export const EmbargoDetail = EmbargoSummary.extend({
  patch: z.string(),
  /** The most recent breaks, oldest first. */
  breaks: z.array(BreakInfo),
  artifacts: z.array(ArtifactInfo),
  /** The patches it carried before, oldest first (`replace`). */
  replaced: z.array(ReplacedInfo).optional(),
  /** Bytes of log kept. */
  logBytes: z.number().int().min(0),
});
export type EmbargoDetail = z.infer<typeof EmbargoDetail>;

export const EmbargoResult = z.discriminatedUnion('action', [
  z.strictObject({ action: z.literal('submit'), id: EmbargoId, digest: PatchDigest, existing: z.boolean() }),
  z.strictObject({ action: z.literal('list'), embargoes: z.array(EmbargoSummary) }),
  z.strictObject({ action: z.literal('show'), embargo: EmbargoDetail }),
  z.strictObject({ action: z.literal('retire'), embargo: EmbargoSummary }),
  z.strictObject({ action: z.literal('logs'), id: EmbargoId, text: z.string(), truncated: z.boolean() }),
  /** The embargo keeps its id; `previous` is the patch digest it replaced. */
  z.strictObject({ action: z.literal('replace'), id: EmbargoId, digest: PatchDigest, previous: PatchDigest, queued: z.boolean() }),
  /** `queued`: false when the project has no published commit yet (its first promotion builds it). */
  z.strictObject({ action: z.literal('rebuild'), id: EmbargoId, queued: z.boolean() }),
  z.strictObject({
    action: z.literal('artifacts'),
    id: EmbargoId,
    /** The embargo's patch digest (the provenance lists it among the embargoed patches). */
    digest: PatchDigest,
    /** The last patched image: its reference in the lane's registry and manifest digest. */
    build: BuildInfo,
    /** PRIVATE_ARTIFACTS, each base64. */
    files: z.array(z.strictObject({ name: z.enum(PRIVATE_ARTIFACTS), base64: z.base64().max(64 * 1024 * 1024) })),
  }),
]);
export type EmbargoResult = z.infer<typeof EmbargoResult>;

const ResponseBase = { version: z.literal(EMBARGO_WIRE_VERSION), inReplyTo: Nonce };
export const EmbargoResponse = z.discriminatedUnion('ok', [
  z.strictObject({ ...ResponseBase, ok: z.literal(true), result: EmbargoResult }),
  z.strictObject({ ...ResponseBase, ok: z.literal(false), error: z.strictObject({ code: z.string().max(100), message: z.string().max(10_000) }) }),
]);
export type EmbargoResponse = z.infer<typeof EmbargoResponse>;
