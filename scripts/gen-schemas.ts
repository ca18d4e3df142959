// `npm run schemas`: write the JSON Schemas generated from shared/schemas/ into schemas/.
import { writeFileSync } from 'node:fs';
import { airlockYamlJsonSchema } from '#shared/schemas/airlock-yaml.js';

export const SCHEMA_FILES = { 'schemas/airlock-yaml.schema.json': airlockYamlJsonSchema } as const;

export function render(make: () => Record<string, unknown>): string {
  return `${JSON.stringify(make(), null, 2)}\n`;
}

if (process.argv[1]?.endsWith('gen-schemas.ts')) {
  for (const [file, make] of Object.entries(SCHEMA_FILES)) writeFileSync(new URL(`../${file}`, import.meta.url), render(make));
}
