/**
 * Build provenance: an in-toto Statement v1 whose predicate is SLSA provenance v1
 * (https://slsa.dev/spec/v1.0/provenance), written as RFC 8785 canonical JSON bytes
 * (../canonical-json.ts: keys sorted by UTF-16 code unit at every level, no whitespace; every number
 * in it is a safe integer, the input schema sees to that) so that the same build always yields the
 * same bytes. The builder signs exactly these bytes with a detached
 * signature (`signDetached` in ./signer.ts); consumers check it with
 * `gpg --verify statement.json.asc statement.json`. A detached PGP signature is not the DSSE
 * envelope that cosign or slsa-verifier read: that is a later step.
 *
 * Where each fact goes:
 *   buildDefinition.externalParameters   the source the build was asked for (repository, commit)
 *   buildDefinition.internalParameters   what the builder decided: policy digest, the steps it ran,
 *                                        the review it found (changes, approvers, submitters)
 *   buildDefinition.resolvedDependencies the source commit, every base image, and every locked
 *                                        dependency the builder fetched and verified (a purl, its
 *                                        digest and the URL it came from), by digest
 *   runDetails                           builder id, invocation id, start and finish times
 */
import { z } from 'zod';
import { parseOrThrow } from '#shared/schemas/issues.js';
import { canonicalJson } from '../canonical-json.js';

export const STATEMENT_TYPE = 'https://in-toto.io/Statement/v1';
export const PREDICATE_TYPE = 'https://slsa.dev/provenance/v1';
/** What kind of build this is; a URN because airlock has no documentation host to point at. */
export const BUILD_TYPE = 'urn:airlock:buildtype:trusted-rebuild:v1';

const Sha256 = z.string().regex(/^(?:sha256:)?[0-9a-f]{64}$/, 'must be sha256:<64 lowercase hex>');
const Commit = z.string().regex(/^(?:[0-9a-f]{40}|[0-9a-f]{64})$/, 'must be a full git commit id');
const Instant = z.union([z.date(), z.iso.datetime({ offset: true })]).transform((d) => new Date(d).toISOString());

/** One step the builder ran (a re-run test job or the publish build) and how it ended (left out for a step that held secrets). */
export const ProvenanceStep = z.strictObject({
  name: z.string().min(1).max(256),
  command: z.union([z.string().max(64 * 1024), z.array(z.string().max(64 * 1024)).max(1024)]),
  exitCode: z.number().int().optional(),
});
export type ProvenanceStep = z.infer<typeof ProvenanceStep>;

const Name = z.string().min(1).max(512);
const ReviewEvidenceSchema = z.strictObject({
  system: z.string().url().max(2048),
  project: Name,
  branch: Name,
  from: Commit.nullable(),
  changes: z
    .array(
      z.strictObject({
        number: z.number().int().min(1),
        changeId: z.string().max(64).optional(),
        branch: Name,
        patchset: z.number().int().min(1),
        revision: Commit,
        subject: z.string().max(1000).optional(),
        owner: Name,
        uploader: Name.optional(),
        submitter: Name.optional(),
        submitted: z.string().max(64).optional(),
        approvals: z.array(z.strictObject({ label: Name, value: z.number().int(), by: Name, account: z.number().int().min(0).optional(), date: z.string().max(64).optional() })).max(1000),
      }),
    )
    .max(10_000),
  merges: z.array(z.strictObject({ commit: Commit, change: z.number().int().min(1) })).max(10_000),
});

export const ProvenanceInput = z
  .strictObject({
    /** The pushed image: `name` is the repository as pulled (e.g. 127.0.0.1:5000/team/app), digest its manifest digest. */
    subject: z.strictObject({ name: z.string().min(1).max(500), digest: Sha256 }),
    /** A URI naming this builder (policies/promotion.yaml `builderId`). */
    builderId: z.string().url().max(500),
    /** The canonical repository (from policy, never from a hint) and the commit built. */
    source: z.strictObject({ repo: z.string().min(1).max(2048), commit: Commit }),
    /** sha256 of the exact policy bytes the decision was made under. */
    policyDigest: Sha256,
    baseImages: z.array(z.strictObject({ name: z.string().min(1).max(500), digest: Sha256 })).max(1000),
    steps: z.array(ProvenanceStep).max(1000),
    startedOn: Instant,
    finishedOn: Instant,
    invocationId: z.string().min(1).max(256),
    /**
     * The project's locked dependencies as the builder fetched and verified them
     * (trusted-builder/deps/dependencies.ts): a purl (or a verified index's URL), its digest by
     * algorithm (hex), the URL it came from.
     */
    dependencies: z
      .array(
        z.strictObject({
          uri: z.string().min(1).max(4096),
          digest: z.record(z.string().regex(/^sha(?:256|384|512)$/, 'sha256, sha384 or sha512'), z.string().regex(/^[0-9a-f]{64,128}$/, 'hex')).refine((d) => Object.keys(d).length >= 1, 'a digest'),
          downloadLocation: z.string().url().max(4096),
        }),
      )
      .max(50_000)
      .optional(),
    /** Embargoed patches applied on top of the source (private images only), by digest alone. */
    patches: z.array(z.strictObject({ digest: Sha256 })).max(100).optional(),
    /**
     * What the builder found of review (verify/review.ts): the changes the promoted history came
     * from, their merged patch sets, owners, uploaders, submitters and the approvals that counted;
     * or `none` when the policy checks none.
     */
    review: z.union([z.literal('none'), ReviewEvidenceSchema]).optional(),
  })
  .refine((p) => p.startedOn <= p.finishedOn, { message: 'finishedOn is before startedOn', path: ['finishedOn'] });
export type ProvenanceInput = z.input<typeof ProvenanceInput>;

/** SLSA's ResourceDescriptor, as far as airlock fills it. */
interface ResourceDescriptor {
  name?: string;
  uri?: string;
  digest: Record<string, string>;
  downloadLocation?: string;
}

/** The statement as written (before canonical serialisation). */
export interface ProvenanceStatement {
  _type: typeof STATEMENT_TYPE;
  subject: [{ name: string; digest: { sha256: string } }];
  predicateType: typeof PREDICATE_TYPE;
  predicate: {
    buildDefinition: {
      buildType: typeof BUILD_TYPE;
      externalParameters: { source: { repository: string; commit: string }; embargoedPatches?: { digest: { sha256: string } }[] };
      internalParameters: { policyDigest: string; steps: ProvenanceStep[]; review?: z.infer<typeof ReviewEvidenceSchema> | 'none' };
      resolvedDependencies: ResourceDescriptor[];
    };
    runDetails: {
      builder: { id: string };
      metadata: { invocationId: string; startedOn: string; finishedOn: string };
    };
  };
}

/** The statement for one pushed image, as canonical JSON bytes: what gets signed and published. */
export function provenanceStatement(input: ProvenanceInput): Buffer {
  return Buffer.from(canonicalJson(buildStatement(input)), 'utf8');
}

/** The statement as an object (validated; throws InvalidInputError listing every problem). */
export function buildStatement(input: ProvenanceInput): ProvenanceStatement {
  const p = parseOrThrow(ProvenanceInput, input, 'provenance');
  const hex = (d: string) => d.replace(/^sha256:/, '');
  return {
    _type: STATEMENT_TYPE,
    subject: [{ name: p.subject.name, digest: { sha256: hex(p.subject.digest) } }],
    predicateType: PREDICATE_TYPE,
    predicate: {
      buildDefinition: {
        buildType: BUILD_TYPE,
        externalParameters: {
          source: { repository: p.source.repo, commit: p.source.commit },
          ...(p.patches ? { embargoedPatches: p.patches.map((x) => ({ digest: { sha256: hex(x.digest) } })) } : {}),
        },
        internalParameters: { policyDigest: `sha256:${hex(p.policyDigest)}`, steps: p.steps, ...(p.review ? { review: p.review } : {}) },
        resolvedDependencies: [
          { uri: gitUri(p.source.repo), digest: { gitCommit: p.source.commit } },
          ...p.baseImages.map((b) => ({ name: b.name, digest: { sha256: hex(b.digest) } })),
          ...(p.dependencies ?? []).map((x) => ({ uri: x.uri, digest: { ...x.digest }, downloadLocation: x.downloadLocation })),
          ...(p.patches ?? []).map((x) => ({ name: 'embargoed-patch', digest: { sha256: hex(x.digest) } })),
        ],
      },
      runDetails: {
        builder: { id: p.builderId },
        metadata: { invocationId: p.invocationId, startedOn: p.startedOn, finishedOn: p.finishedOn },
      },
    },
  };
}

/** SLSA's convention for a git source: `git+<url>`; a path on this host becomes a file:// URL. */
function gitUri(repo: string): string {
  if (repo.startsWith('git+')) return repo;
  return repo.startsWith('/') ? `git+file://${repo}` : `git+${repo}`;
}
