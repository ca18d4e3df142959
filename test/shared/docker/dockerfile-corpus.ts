/**
 * Dockerfiles that exercise each rule of Docker's parser, each with what Docker makes of it:
 * the instructions (as written), their `--flag` words and their arguments, with the lines they
 * span, and the problems airlock's reader reports. Written from buildkit's
 * frontend/dockerfile/parser (parser.go, directives.go, line_parsers.go, split_command.go), and
 * checked against buildkit's own parser: the v0.8 one that Docker 20.10 (this machine's engine)
 * vendors, and the current one (see test/fixtures/dockerfiles/README.md).
 *
 * `docker` says whose reading `nodes` is where Docker versions disagree (the file is then refused):
 * 'v0.8' (Docker 20.10) or 'current' (newer Docker, BuildKit); otherwise both read it so.
 */

/** [instruction as written, flag words, ...arguments]; ONBUILD's argument is its inner instruction. */
export type Brief = [string, string[], ...(string | Brief)[]];

export interface CorpusCase {
  name: string;
  text: string | Buffer;
  nodes: Brief[];
  /** [first line, last line] of each instruction, when the case is about lines. */
  lines?: [number, number][];
  escape?: '\\' | '`';
  /** Error problems: [line, a part of the message]. */
  errors?: [number, string][];
  docker?: 'v0.8' | 'current';
}

const n = (cmd: string, ...next: (string | Brief)[]): Brief => [cmd, [], ...next];
const f = (cmd: string, flags: string[], ...next: (string | Brief)[]): Brief => [cmd, flags, ...next];

export const CORPUS: CorpusCase[] = [
  // --- line continuation
  { name: 'a line ending in `\\\\` (an escaped escape character) does not continue', text: 'FROM a\nRUN echo x \\\\\nRUN echo y\n', nodes: [n('FROM', 'a'), n('RUN', 'echo x \\\\'), n('RUN', 'echo y')] },
  { name: 'nor does one ending in `\\\\\\` (Docker\'s regexp reads it like `\\\\`)', text: 'FROM a\nRUN echo x \\\\\\\nRUN echo y\n', nodes: [n('FROM', 'a'), n('RUN', 'echo x \\\\\\'), n('RUN', 'echo y')] },
  { name: 'spaces and tabs after the escape character still continue', text: 'FROM a\nRUN echo x \\ \t \nmore\n', nodes: [n('FROM', 'a'), n('RUN', 'echo x more')], lines: [[1, 1], [2, 3]] },
  { name: 'a vertical tab or form feed after it does not', text: 'FROM a\nRUN echo x \\\v\nRUN echo y \\\f\nRUN echo z\n', nodes: [n('FROM', 'a'), n('RUN', 'echo x \\'), n('RUN', 'echo y \\'), n('RUN', 'echo z')] },
  { name: 'nor does a no-break space', text: 'FROM a\nRUN echo x \\\u00a0\nRUN echo y\n', nodes: [n('FROM', 'a'), n('RUN', 'echo x \\'), n('RUN', 'echo y')] },
  { name: 'the escape character alone on a line continues with nothing', text: 'FROM a\nRUN a \\\n\\\n b\n', nodes: [n('FROM', 'a'), n('RUN', 'a  b')], lines: [[1, 1], [2, 4]] },
  { name: 'a file may start with a continuation', text: '\\\nFROM a\n', nodes: [n('FROM', 'a')], lines: [[1, 2]] },
  { name: 'comment lines, indented comments and blank lines inside a continuation are skipped', text: 'FROM a\nRUN a \\\n# c\n   # indented\n\n \t \nb\n', nodes: [n('FROM', 'a'), n('RUN', 'a b')], lines: [[1, 1], [2, 7]] },
  { name: 'continuation lines keep their leading spaces, the first line does not', text: '   FROM a\nRUN a\\\n   b\n', nodes: [n('FROM', 'a'), n('RUN', 'a   b')] },
  { name: 'a continuation at the end of the file ends the instruction', text: 'FROM a\nRUN a \\', nodes: [n('FROM', 'a'), n('RUN', 'a')] },
  { name: 'a comment ending in `\\` does not continue', text: '# c \\\nFROM a\n', nodes: [n('FROM', 'a')], lines: [[2, 2]] },
  { name: 'CRLF line endings', text: 'FROM a\r\nRUN a \\\r\n b\r\n', nodes: [n('FROM', 'a'), n('RUN', 'a  b')] },
  { name: 'a lone CR is an ordinary character (and refused)', text: 'FROM a\nRUN a \\\rADD http://x /x\n', nodes: [n('FROM', 'a'), n('RUN', 'a \\\rADD http://x /x')], errors: [[2, 'carriage return']] },
  {
    name: 'two CRs before a LF: the current parser drops both, v0.8 one (refused)',
    text: 'FROM a\nRUN a \\\r\r\nb\n',
    nodes: [n('FROM', 'a'), n('RUN', 'a b')],
    errors: [[2, 'carriage return']],
    docker: 'current',
  },

  // --- parser directives, BOM, escape character
  { name: 'the backtick escape', text: '# escape=`\nFROM a\nRUN echo x \\\nRUN echo `\n  y\n', escape: '`', nodes: [n('FROM', 'a'), n('RUN', 'echo x \\'), n('RUN', 'echo   y')] },
  { name: 'a BOM is dropped from the first line, then directives are read', text: '\ufeff# escape=`\nFROM a\nRUN x \\\nRUN y\n', escape: '`', nodes: [n('FROM', 'a'), n('RUN', 'x \\'), n('RUN', 'y')] },
  { name: 'a BOM anywhere else is a character', text: 'FROM a\n\ufeffRUN x\n', nodes: [n('FROM', 'a'), n('\ufeffRUN', '')] },
  { name: 'two BOMs: the second is a character', text: '\ufeff\ufeffFROM a\n', nodes: [n('\ufeffFROM', '')] },
  { name: 'directive names in any case, spaces around `=`', text: '#   ESCAPE  =  `  \nFROM a\nRUN x \\\nRUN y\n', escape: '`', nodes: [n('FROM', 'a'), n('RUN', 'x \\'), n('RUN', 'y')] },
  { name: 'directives are read after leading spaces', text: '  # escape=`\nFROM a\nRUN x `\n y\n', escape: '`', nodes: [n('FROM', 'a'), n('RUN', 'x  y')] },
  { name: 'a directive after a blank line is a comment', text: '\n# escape=`\nFROM a\nRUN x `\nRUN y\n', nodes: [n('FROM', 'a'), n('RUN', 'x `'), n('RUN', 'y')] },
  { name: 'a directive after another comment is a comment', text: '# hello\n# escape=`\nFROM a\nRUN x `\nRUN y\n', nodes: [n('FROM', 'a'), n('RUN', 'x `'), n('RUN', 'y')] },
  { name: 'an unknown directive ends the directives (and is refused)', text: '# foo=bar\n# escape=`\nFROM a\nRUN x `\nRUN y\n', nodes: [n('FROM', 'a'), n('RUN', 'x `'), n('RUN', 'y')], errors: [[1, 'unknown parser directive']] },
  { name: '`# check=` then `# escape=`: v0.8 stops at check (refused)', text: '# check=skip=all\n# escape=`\nFROM a\nRUN x `\n y\n', escape: '`', nodes: [n('FROM', 'a'), n('RUN', 'x  y')], errors: [[2, 'not read by every Docker version']], docker: 'current' },
  { name: '`# escape=` then `# check=` is read by both', text: '# escape=`\n# check=skip=all\nFROM a\n', escape: '`', nodes: [n('FROM', 'a')] },
  { name: 'a no-break space after `#`: a directive to the current parser only (refused)', text: '#\u00a0escape=`\nFROM a\nRUN x `\n y\n', escape: '`', nodes: [n('FROM', 'a'), n('RUN', 'x  y')], errors: [[1, 'not read by every Docker version']], docker: 'current' },
  { name: 'a repeated directive is an error', text: '# escape=`\n# escape=\\\nFROM a\n', escape: '`', nodes: [n('FROM', 'a')], errors: [[2, 'only one escape parser directive']] },
  { name: 'an escape character other than \\ or `', text: '# escape=x\nFROM a\n', nodes: [n('FROM', 'a')], errors: [[1, 'invalid escape token']] },
  { name: '`# escape=` and one space: the value is the space', text: '# escape= \nFROM a\n', nodes: [n('FROM', 'a')], errors: [[1, "invalid escape token ' '"]] },
  { name: '`# escape=` and nothing is no directive', text: '# escape=\nFROM a\nRUN x \\\n y\n', nodes: [n('FROM', 'a'), n('RUN', 'x  y')] },
  { name: '`# syntax=` is refused', text: '# syntax=docker/dockerfile:1\nFROM a\n', nodes: [n('FROM', 'a')], errors: [[1, 'syntax']] },
  { name: 'after a `#!` line BuildKit still finds `# syntax=` (refused)', text: '#!/bin/sh\n# syntax=evil/frontend\nFROM a\n', nodes: [n('FROM', 'a')], errors: [[2, 'syntax']] },
  { name: '`//syntax=`: BuildKit reads it, the parser sees an instruction (refused)', text: '//syntax=evil/frontend\nFROM a\n', nodes: [n('//syntax=evil/frontend', ''), n('FROM', 'a')], errors: [[1, 'syntax']] },

  // --- splitting an instruction
  { name: 'instruction names in any case', text: 'from a\nRun x\ncOpY a b\n', nodes: [n('from', 'a'), n('Run', 'x'), n('cOpY', 'a', 'b')] },
  { name: 'a no-break space before an instruction is trimmed; between it and its arguments it is no separator', text: 'FROM a\n\u00a0RUN echo x\nRUN\u00a0echo y\n', nodes: [n('FROM', 'a'), n('RUN', 'echo x'), n('RUN\u00a0echo', '')] },
  { name: 'flags: quotes and the escape character apply', text: 'FROM a\nCOPY --chown="a b" --from=\\x y /z\n', nodes: [n('FROM', 'a'), f('COPY', ['--chown=a b', '--from=x'], 'y', '/z')] },
  { name: 'flags: `--` ends them', text: 'FROM a\nCOPY --from=a -- --from=b /x\n', nodes: [n('FROM', 'a'), f('COPY', ['--from=a'], '--from=b', '/x')] },
  { name: 'flags on any instruction', text: 'FROM --platform=linux/amd64 a AS b\nRUN --network=host echo\nCMD --x [ "a" ]\n', nodes: [f('FROM', ['--platform=linux/amd64'], 'a', 'AS', 'b'), f('RUN', ['--network=host'], 'echo'), f('CMD', ['--x'], 'a')] },
  { name: 'flags end at the bytes 0x85 and 0xA0 (Go tests bytes there): `à` is C3 A0', text: 'FROM a\nCOPY --from=a\u00e0b /x /y\n', nodes: [n('FROM', 'a'), f('COPY', ['--from=a\u00c3'], 'b', '/x', '/y')] },
  {
    name: '`\\` in a flag under the backtick escape: v0.8 reads it as the escape character (refused)',
    text: '# escape=`\nFROM a\nCOPY --from=a\\ b /x /y\n',
    escape: '`',
    nodes: [n('FROM', 'a'), f('COPY', ['--from=a\\'], 'b', '/x', '/y')],
    errors: [[3, 'flag']],
    docker: 'current',
  },

  // --- arguments
  { name: 'JSON form', text: 'FROM a\nADD ["a b", "/c"]\n', nodes: [n('FROM', 'a'), n('ADD', 'a b', '/c')] },
  { name: 'not JSON: shell-form words', text: 'FROM a\nADD [a, /b]\n', nodes: [n('FROM', 'a'), n('ADD', '[a,', '/b]')] },
  { name: 'text after a JSON array: v0.8 reads the array (refused)', text: 'FROM a\nADD ["x", "/y"] http://127.0.0.1/z /w\n', nodes: [n('FROM', 'a'), n('ADD', '["x",', '"/y"]', 'http://127.0.0.1/z', '/w')], errors: [[2, 'after the JSON array']], docker: 'current' },
  { name: 'a JSON array of non-strings is an error', text: 'FROM a\nCMD [1]\n', nodes: [n('FROM', 'a'), n('CMD')], errors: [[2, 'strings only']] },
  { name: 'ENV and LABEL: name=value words, or one name and the rest', text: 'FROM a\nENV a=b c="d e"\nLABEL k v w\n', nodes: [n('FROM', 'a'), n('ENV', 'a', 'b', '=', 'c', '"d e"', '='), n('LABEL', 'k', 'v w', '')] },
  { name: 'ENV without a value is an error', text: 'FROM a\nENV PATH\n', nodes: [n('FROM', 'a'), n('ENV')], errors: [[2, 'ENV must have two arguments']] },
  { name: 'FROM splits at ASCII spaces only', text: 'FROM a\u00a0AS b\n', nodes: [n('FROM', 'a\u00a0AS', 'b')] },
  { name: 'ONBUILD holds an instruction', text: 'FROM a\nONBUILD ADD http://x /y\n', nodes: [n('FROM', 'a'), n('ONBUILD', n('ADD', 'http://x', '/y'))] },
  { name: 'an unknown instruction is parsed (the check refuses it)', text: 'FROM a\nFETCH http://x\n', nodes: [n('FROM', 'a'), n('FETCH', '')] },

  // --- heredocs: newer Docker reads the next lines as content, v0.8 as instructions (refused)
  { name: 'RUN <<EOF', text: 'FROM a\nRUN cat <<EOF\nADD http://x /x\nEOF\n', nodes: [n('FROM', 'a'), n('RUN', 'cat <<EOF'), n('ADD', 'http://x', '/x'), n('EOF', '')], errors: [[2, '`<<` in RUN']], docker: 'v0.8' },
  { name: 'COPY <<-"E" with a quoted delimiter', text: 'FROM a\nCOPY <<-"E" /x\n\tFROM evil\n\tE\n', nodes: [n('FROM', 'a'), n('COPY', '<<-"E"', '/x'), n('FROM', 'evil'), n('E', '')], errors: [[2, '`<<` in COPY']], docker: 'v0.8' },
  { name: '`<<` in a shell expression: the current parser takes it for a heredoc that never ends', text: 'FROM a\nRUN echo $((1 << 2))\n', nodes: [n('FROM', 'a'), n('RUN', 'echo $((1 << 2))')], errors: [[2, '`<<` in RUN']], docker: 'v0.8' },
  { name: '`<<` in other instructions is no heredoc', text: 'FROM a\nLABEL a="<<EOF"\n', nodes: [n('FROM', 'a'), n('LABEL', 'a', '"<<EOF"', '=')] },

  // --- bytes
  { name: 'a NUL byte (refused)', text: 'FROM a\nRUN a\0b\n', nodes: [n('FROM', 'a'), n('RUN', 'a\0b')], errors: [[2, 'NUL']] },
  { name: 'invalid UTF-8 is read as Go does: each bad byte a character', text: Buffer.concat([Buffer.from('FROM a\nRUN x'), Buffer.from([0xff, 0xc3]), Buffer.from(' \\\ny\n')]), nodes: [n('FROM', 'a'), n('RUN', 'x\ufffd\ufffd y')] },
  { name: 'no instructions', text: '# only a comment\n\n', nodes: [], errors: [[2, 'file with no instructions']] },
];
