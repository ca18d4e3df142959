/**
 * config: `.airlock.yaml` read from the lane's tree; its `publish` section names the Dockerfile of
 * the published image. Anything missing or broken is a refusal at step `config`.
 */
import { AIRLOCK_YAML, parseAirlockYaml } from '#shared/repo-config/airlock-yaml.js';
import { PublishSection, type AirlockYaml } from '#shared/schemas/airlock-yaml.js';
import type { JobPolicy } from '#shared/schemas/job-policy.js';
import { Stop, type LaneSource } from './lane.js';

const CONFIG_MAX_BYTES = 1024 * 1024; // 1 MiB

/** The `publish` section of `.airlock.yaml` (shared/schemas/airlock-yaml.ts: the CI checks it too). */
export { PublishSection };

export interface LaneConfig {
  cfg: AirlockYaml;
  publish: PublishSection;
}

export async function readConfig(source: LaneSource, jobPolicy: JobPolicy): Promise<LaneConfig> {
  const text = await source.readText(AIRLOCK_YAML, CONFIG_MAX_BYTES);
  const parsed = parseAirlockYaml(text, jobPolicy);
  if (!parsed.value) throw new Stop('refused', 'config', `${AIRLOCK_YAML}: ${parsed.issues.map((i) => `${i.path}: ${i.message}`).join('; ')}`);
  // The section itself was checked with the rest of the file; without one there is nothing to publish.
  const publish = parsed.value.publish;
  if (!publish) throw new Stop('refused', 'config', `${AIRLOCK_YAML}: publish: required (the Dockerfile of the published image: publish: { dockerfile: Dockerfile })`);
  return { cfg: parsed.value, publish };
}
