/**
 * Splitting one line of a `vfio-user shell` script into words, as a POSIX
 * shell does for the simple cases: blanks separate words, `'…'` and `"…"`
 * quote (a backslash escapes `"` and `\` inside double quotes, any character
 * outside quotes), and `#` at the start of a word starts a comment.
 */
import { InvalidArgumentError } from '../errors.js';

/**
 * The words of `line` (empty for a blank line or a comment).
 * @throws {InvalidArgumentError} EINVAL for an unterminated quote or a trailing backslash.
 */
export function splitWords(line: string): string[] {
  const words: string[] = [];
  let word: string | undefined;
  let quote: '"' | "'" | undefined;
  for (let i = 0; i < line.length; i++) {
    const c = line[i] as string;
    if (quote === "'") {
      if (c === "'") quote = undefined;
      else word += c;
    } else if (quote === '"') {
      if (c === '"') quote = undefined;
      else if (c === '\\' && (line[i + 1] === '"' || line[i + 1] === '\\')) word += line[++i] as string;
      else word += c;
    } else if (c === ' ' || c === '\t' || c === '\r') {
      if (word !== undefined) words.push(word);
      word = undefined;
    } else if (c === '#' && word === undefined) {
      break;
    } else if (c === '"' || c === "'") {
      quote = c;
      word ??= '';
    } else if (c === '\\') {
      if (i + 1 >= line.length) throw new InvalidArgumentError('a backslash ends the line');
      word = (word ?? '') + (line[++i] as string);
    } else {
      word = (word ?? '') + c;
    }
  }
  if (quote !== undefined) throw new InvalidArgumentError(`unterminated ${quote} quote`);
  if (word !== undefined) words.push(word);
  return words;
}
