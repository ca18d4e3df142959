/**
 * An environment build in a child process, for tests that kill it (`kill -9`) mid-build and check
 * that the next process's reaper removes what it left. argv: <project>. Prints `SANDBOX <dir>`
 * on stdout once the build's RUN step runs, then waits (the step sleeps for 5 minutes).
 */
import { input, makeRig } from '../untrusted-ci/environments/env-support.js';

const rig = makeRig();
const project = process.argv[2] ?? `env-child-${process.pid}`;
const marker = `child-step-${process.pid}`;
const i = await input(rig, project, `FROM airlock/base:busybox\nRUN echo ${marker}; sleep 300\n`, {}, {
  onLog: (line) => {
    if (line !== marker) return;
    const [sandbox] = rig.builder.sandboxes.list();
    process.stdout.write(`SANDBOX ${sandbox?.dir ?? ''}\n`);
  },
});
await rig.builder.ensure(i).catch((e: unknown) => {
  process.stderr.write(`${(e as Error).message}\n`);
  process.exit(1);
});
