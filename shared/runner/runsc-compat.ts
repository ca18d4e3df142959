/**
 * The runsc (gVisor) self-test's verdicts: `<stateDir>/runsc-compat.json`, image id → passed,
 * written by the bootstrap (scripts/base-images.sh). A job runs under runsc only on an image listed
 * there as passing (or, on an executor host, one the CI host's table lists: the CI sends its verdict
 * with the job, untrusted-ci/remote/). No table, or one that cannot be read: nothing passed.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

export const RUNSC_COMPAT_FILE = 'runsc-compat.json';

/** The verdicts of `<stateDir>/runsc-compat.json`; empty when there is none or it is not a JSON object. */
export function readRunscVerdicts(stateDir: string): Record<string, unknown> {
  try {
    const v = JSON.parse(readFileSync(join(stateDir, RUNSC_COMPAT_FILE), 'utf8')) as unknown;
    return v && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : {};
  } catch {
    return {};
  }
}

/** Whether the image (by id) passed the self-test here. */
export function runscPassed(stateDir: string, imageId: string): boolean {
  const table = readRunscVerdicts(stateDir);
  return Object.hasOwn(table, imageId) && table[imageId] === true;
}

/** Whether runsc passed the self-test here on any image at all: this engine's runsc works. */
export function runscWorksHere(stateDir: string): boolean {
  return Object.values(readRunscVerdicts(stateDir)).some((v) => v === true);
}
