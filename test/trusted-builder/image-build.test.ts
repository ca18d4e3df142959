import { describe, expect, it } from 'vitest';
import { pinBaseImages } from '../../trusted-builder/build/image-build.js';

const ID = `sha256:${'a'.repeat(64)}`;

describe('pinBaseImages', () => {
  it('names every pinned base by its id, in FROM and COPY --from, and leaves stages and the rest alone', () => {
    const text = ['FROM airlock/base:busybox AS build', 'RUN echo FROM airlock/base:busybox --from=airlock/base:busybox', 'COPY --from=airlock/base:busybox /bin/busybox /b', 'FROM build', 'COPY --from=build /x /y', '  from --platform=linux/amd64 docker.io/airlock/base:busybox'].join('\n');
    expect(pinBaseImages(text, [{ name: 'airlock/base:busybox', digest: ID }]).split('\n')).toEqual([
      `FROM ${ID} AS build`,
      'RUN echo FROM airlock/base:busybox --from=airlock/base:busybox',
      `COPY --from=${ID} /bin/busybox /b`,
      'FROM build',
      'COPY --from=build /x /y',
      `  from --platform=linux/amd64 ${ID}`,
    ]);
  });
});
