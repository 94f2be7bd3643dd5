/**
 * Type-checks and compiles every ts block in ONE TypeScript program (the
 * expensive part is loading the library's declarations, done once), emitting
 * each block's `.js` next to its `.ts`. Blocks import `'vfio-user'`, which
 * resolves through `node_modules/vfio-user` (a link to this checkout) in the
 * snippet root, exactly as for a user who installed the package. A block's
 * diagnostics are its own: a syntax error in one block does not hide the type
 * errors of another.
 */
import { join } from 'node:path';
import ts from 'typescript';

/** Compiler options for documentation code: a user's strict ESM project on Node. */
export function snippetOptions(root: string, repo: string): ts.CompilerOptions {
  return {
    target: ts.ScriptTarget.ES2023,
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
    lib: ['lib.es2023.d.ts'],
    types: ['node'],
    typeRoots: [join(repo, 'node_modules/@types')],
    strict: true,
    skipLibCheck: true,
    moduleDetection: ts.ModuleDetectionKind.Force,
    noEmitOnError: false,
    rootDir: root,
  };
}

/** Where a diagnostic points: a block's file and 1-based line/column, turned into a document position. */
export type Locate = (file: string, line: number, column: number) => string;

function format(d: ts.Diagnostic, locate: Locate): string {
  const text = ts.flattenDiagnosticMessageText(d.messageText, '\n');
  if (!d.file || d.start === undefined) return `TS${d.code}: ${text}`;
  const { line, character } = d.file.getLineAndCharacterOfPosition(d.start);
  return `${locate(d.file.fileName, line + 1, character + 1)}: TS${d.code}: ${text}`;
}

/** Compiles `files` (absolute .ts paths); returns each file's diagnostics (empty when clean). */
export function compileAll(files: readonly string[], root: string, repo: string, locate: Locate): Map<string, string[]> {
  const program = ts.createProgram({ rootNames: [...files], options: snippetOptions(root, repo) });
  const result = new Map<string, string[]>();
  const global = [...program.getOptionsDiagnostics(), ...program.getGlobalDiagnostics()].map((d) => format(d, locate));
  for (const file of files) {
    const source = program.getSourceFile(file);
    if (!source) {
      result.set(file, [`${file}: not part of the program`]);
      continue;
    }
    const diagnostics = [...program.getSyntacticDiagnostics(source), ...program.getSemanticDiagnostics(source)];
    result.set(file, [...global, ...diagnostics.map((d) => format(d, locate))]);
    program.emit(source);
  }
  return result;
}
