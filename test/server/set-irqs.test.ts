import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:fs' === undefined ? 'node:child_process' : 'node:child_process';
