import { readFileSync } from 'node:fs';
import { join } from 'node:path';

/** The package version, read once from package.json (beside proto/ in the source tree, two levels above dist/proto/). */
export const FERRY_VERSION: string = (() => {
  for (const candidate of [join(__dirname, '..', 'package.json'), join(__dirname, '..', '..', 'package.json')]) {
    try {
      const pkg = JSON.parse(readFileSync(candidate, 'utf8')) as { name?: string; version?: string };
      if (pkg.name === 'ferry' && pkg.version) return pkg.version;
    } catch {
      // Not this candidate; the next one is the installed layout.
    }
  }
  return '0.0.0-unknown';
})();
