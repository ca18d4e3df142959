/**
 * config: `.airlock.yaml` read from the lane's tree; its `publish` section names the Dockerfile of
 * the published image. Anything missing or broken is a refusal at step `config`.
 */
import { z } from 'zod';
import { AIRLOCK_YAML, parseAirlockYaml } from '#shared/repo-config/airlock-yaml.js';
import { RepoPath, type AirlockYaml } from '#shared/schemas/airlock-yaml.js';
import type { JobPolicy } from '#shared/schemas/job-policy.js';
import { Stop, type LaneSource } from './lane.js';

const CONFIG_MAX_BYTES = 1024 * 1024; // 1 MiB

/** The `publish` section of `.airlock.yaml`, as the trusted builder reads it. */
export const PublishSection = z.strictObject({
  /** The Dockerfile of the published image, relative to the repository root. */
  dockerfile: RepoPath,
  /** The build context (a directory of the repository). */
  context: RepoPath.default('.'),
});
export type PublishSection = z.infer<typeof PublishSection>;

export interface LaneConfig {
  cfg: AirlockYaml;
  publish: PublishSection;
}

export async function readConfig(source: LaneSource, jobPolicy: JobPolicy): Promise<LaneConfig> {
  const text = await source.readText(AIRLOCK_YAML, CONFIG_MAX_BYTES);
  const parsed = parseAirlockYaml(text, jobPolicy);
  if (!parsed.value) throw new Stop('refused', 'config', `${AIRLOCK_YAML}: ${parsed.issues.map((i) => `${i.path}: ${i.message}`).join('; ')}`);
  const publish = PublishSection.safeParse(parsed.value.publish);
  if (!publish.success) throw new Stop('refused', 'config', `${AIRLOCK_YAML}: publish: ${publish.error.issues.map((i) => `${i.path.join('.') || '(section)'}: ${i.message}`).join('; ')}`);
  return { cfg: parsed.value, publish: publish.data };
}
