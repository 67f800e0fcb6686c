/**
 * Compares two ELF objects the way the debug-info tests need it: byte for byte when they are the
 * same; otherwise section by section, with every non-debug section compared byte for byte and the
 * DWARF compared through readelf's dump, normalised so that the only difference tolerated is the
 * value of DW_AT_producer (which records `-fdirectives-only` after Ferry's preprocessing split).
 *
 * Normalisation, and nothing more:
 * - DW_AT_producer values are replaced by `<producer>` (in the DIE dump, in .debug_str and in the
 *   relocations that point at them);
 * - string-table offsets ("(indirect string, offset: 0x…)", "(offset: 0x…): ") are dropped, the
 *   string itself stays: a longer producer string moves every string after it;
 * - .debug_str and .debug_line_str are compared as sets of strings (their order follows gcc's hash
 *   table, which a different producer string changes);
 * - in relocation sections that apply to .debug_* sections, addends against .debug_str and
 *   .debug_line_str are replaced by the string they point at.
 * Everything else (code, data, .symtab, .strtab, .rela.text, .eh_frame, line tables, columns,
 * file names, DW_AT_comp_dir…) must match exactly.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';

export interface ObjectComparison {
  /** Byte-for-byte identical files. */
  identical: boolean;
  /** One readable line per difference that is not DW_AT_producer; empty when only the producer differs. */
  differences: string[];
  /** DW_AT_producer values when the files are not identical (for messages). */
  producers?: { local: string[]; remote: string[] };
}

interface Section {
  index: number;
  name: string;
  /** name, or name#n for the n-th repeat (section groups repeat .debug_macro, .rela.debug_macro…). */
  key: string;
  type: string;
  offset: number;
  size: number;
  entsize: string;
  flags: string;
  link: string;
  info: string;
  align: string;
}

const MAX_BUFFER = 1 << 30;

/**
 * readelf's output. It exits 1 after mere warnings on some split-DWARF files (a .dwo's location
 * lists without their .debug_addr), so its status counts only when it printed nothing.
 */
function readelf(args: string[], path: string): string {
  const result = spawnSync('readelf', [...args, path], { encoding: 'utf8', maxBuffer: MAX_BUFFER, stdio: ['ignore', 'pipe', 'pipe'] });
  if (result.error) throw result.error;
  if (result.status !== 0 && !result.stdout) throw new Error(`readelf ${args.join(' ')} ${path} failed (${result.status}): ${result.stderr.trim()}`);
  return result.stdout;
}

function keyed<T extends { name: string }>(items: T[]): Array<T & { key: string }> {
  const seen = new Map<string, number>();
  return items.map((item) => {
    const n = seen.get(item.name) ?? 0;
    seen.set(item.name, n + 1);
    return { ...item, key: n === 0 ? item.name : `${item.name}#${n}` };
  });
}

/** The section headers, as `readelf -S -W` lists them. */
export function sections(path: string): Section[] {
  const rows: Array<Omit<Section, 'key'>> = [];
  const line = /^\s*\[\s*(\d+)\]\s+(\S*)\s+(\S+)\s+([0-9a-f]+)\s+([0-9a-f]+)\s+([0-9a-f]+)\s+([0-9a-f]+)\s+([A-Za-z]*)\s+(\d+)\s+(\d+)\s+(\d+)\s*$/;
  for (const text of readelf(['-S', '-W'], path).split('\n')) {
    const m = line.exec(text);
    if (!m || m[1] === '0') continue;
    rows.push({
      index: Number(m[1]),
      name: m[2],
      type: m[3],
      offset: parseInt(m[5], 16),
      size: parseInt(m[6], 16),
      entsize: m[7],
      flags: m[8],
      link: m[9],
      info: m[10],
      align: m[11],
    });
  }
  if (rows.length === 0) throw new Error(`readelf -S found no sections in ${path}`);
  return keyed(rows);
}

/** String sections, compared as sets of strings (their order follows gcc's hash table). */
const STRING_SECTIONS = new Set(['.debug_str', '.debug_line_str', '.debug_str.dwo']);
/**
 * Runs `use` on the files with compressed debug sections (-gz) decompressed by objcopy into a
 * temporary directory, so that string tables can be read; files without them are used as they are.
 */
function withDecompressed<T>(paths: string[], use: (paths: string[]) => T): T {
  if (!paths.some((p) => sections(p).some((s) => s.flags.includes('C')))) return use(paths);
  const dir = mkdtempSync(join(tmpdir(), 'ferry-objdiff-'));
  try {
    const copies = paths.map((p, i) => {
      const copy = join(dir, `${i}-${basename(p)}`);
      execFileSync('objcopy', ['--decompress-debug-sections', p, copy], { stdio: ['ignore', 'ignore', 'pipe'] });
      return copy;
    });
    return use(copies);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const isDebug = (name: string) => name.startsWith('.debug_') || name.startsWith('.zdebug_');
/** .rela.debug_info and friends: relocations that apply to a debug section. */
const isDebugRelocation = (name: string) => /^\.rela?\.(z?debug_)/.test(name);

function contents(file: Buffer, section: Section): Buffer {
  return section.type === 'NOBITS' ? Buffer.alloc(0) : file.subarray(section.offset, section.offset + section.size);
}

/** NUL-terminated strings of a string section, by offset. */
function stringTable(data: Buffer): { at: (offset: number) => string; all: string[] } {
  const all: string[] = [];
  let start = 0;
  for (let i = 0; i < data.length; i++) {
    if (data[i] === 0) {
      all.push(data.toString('utf8', start, i));
      start = i + 1;
    }
  }
  return {
    at: (offset) => {
      const end = data.indexOf(0, offset);
      return data.toString('utf8', offset, end < 0 ? data.length : end);
    },
    all,
  };
}

interface DumpOptions {
  /** Replace DW_AT_producer values with `<producer>` (default true). */
  dropProducer?: boolean;
}

/**
 * info, abbrev, aranges, Ranges, rawline, decodedline, loc, macro, frames, addr, str-offsets, and N:
 * do not follow the link to a .dwo file (each file is compared by itself). As letters, because
 * readelf 2.40 prints only one of the line tables for `--debug-dump=rawline,decodedline`.
 */
const DUMP_FLAGS = '-wiarRlLomfAON';
const HEADER = /^(?:Contents of the|Raw dump of debug contents of section|Decoded dump of debug contents of section) (\S+?)(?: section)?:$/;

/** The DIE dump: .debug_info and, in a .dwo file, .debug_info.dwo. */
function infoLines(dump: Map<string, string[]>): string[] {
  return [...dump].filter(([key]) => /^\.debug_info(\.dwo)?(#\d+)?$/.test(key)).flatMap(([, lines]) => lines);
}

/** The DW_AT_producer values of an object's compile units. */
function producersIn(info: string[]): string[] {
  return info.filter((line) => /^\s*<[0-9a-f]+>\s+DW_AT_producer\s*:/.test(line)).map(attributeValue);
}

/** The value of a normalised DIE attribute line, without its form: "<d> DW_AT_name : (line_strp): a.c" → "a.c". */
export function attributeValue(line: string): string {
  return line
    .replace(/^\s*<[0-9a-f]+>\s+DW_AT_\w+\s*:\s*/, '')
    .replace(/^\((?:indirect (?:line )?string|[A-Za-z_0-9]+)\):?\s*/, '')
    .trimEnd();
}

/**
 * Strings behind DW_FORM_strx indices (split DWARF: .debug_str_offsets.dwo into .debug_str.dwo).
 * readelf 2.40 resolves them without skipping the DWARF 5 offsets-table header (it shows the string
 * two entries earlier), so they are resolved here; the index itself is dropped like any offset,
 * since a different producer string reorders the table.
 */
function strxResolver(file: Buffer, list: Section[], suffix: string): ((index: number) => string) | undefined {
  const offsets = list.find((s) => s.name === `.debug_str_offsets${suffix}`);
  const strings = list.find((s) => s.name === `.debug_str${suffix}`);
  if (!offsets || !strings) return undefined;
  const table = contents(file, offsets);
  const text = stringTable(contents(file, strings));
  // DWARF 5: unit_length (4), version (2), padding (2); the GNU DWARF 4 extension has no header.
  const base = table.length >= 8 && table.readUInt32LE(0) + 4 === table.length && table.readUInt16LE(4) === 5 ? 8 : 0;
  return (index) => {
    const at = base + index * 4;
    return at + 4 <= table.length ? text.at(table.readUInt32LE(at)) : `<bad strx ${index}>`;
  };
}

function normaliseLine(line: string, strx?: (index: number) => string): string {
  if (strx) {
    line = line.replace(/\((strx\d?|GNU_str_index)\) \(offset: (?:0x)?([0-9a-f]+)\): .*$/, (_all, form: string, index: string) => `(${form}): ${strx(parseInt(index, 16))}`);
  }
  return line
    .replace(/\((indirect (?:line )?string), offset: 0x[0-9a-f]+\)/g, '($1)')
    .replace(/ ?\(offset: (?:0x)?[0-9a-f]+\): /g, ': ')
    .trimEnd();
}

/**
 * readelf's DWARF dump, split by the section each part describes (keys as in `sections`, a
 * decoded line table as ".debug_line (decoded)"), offsets into string tables dropped.
 */
export function debugDumpBySection(path: string, options: DumpOptions = {}): Map<string, string[]> {
  return withDecompressed([path], ([plain]) => dumpBySection(plain, options));
}

function dumpBySection(path: string, options: DumpOptions): Map<string, string[]> {
  const text = readelf([DUMP_FLAGS, '-W'], path);
  const file = readFileSync(path);
  const list = sections(path);
  const resolvers = new Map<string, ((index: number) => string) | undefined>();
  const dropProducer = options.dropProducer ?? true;
  const parts = new Map<string, string[]>();
  const seen = new Map<string, number>();
  let current: string[] | undefined;
  let strx: ((index: number) => string) | undefined;
  for (const raw of text.split('\n')) {
    const header = HEADER.exec(raw);
    if (header) {
      // The raw line program keeps the section's name; the decoded table is a part of its own.
      const name = header[1] === '.debug_line' && !raw.startsWith('Raw dump') ? '.debug_line (decoded)' : header[1];
      const n = seen.get(name) ?? 0;
      seen.set(name, n + 1);
      current = [];
      parts.set(n === 0 ? name : `${name}#${n}`, current);
      const suffix = name.endsWith('.dwo') ? '.dwo' : '';
      if (!resolvers.has(suffix)) resolvers.set(suffix, strxResolver(file, list, suffix));
      strx = resolvers.get(suffix);
      continue;
    }
    if (!current) continue;
    let line = normaliseLine(raw, strx);
    if (dropProducer && /DW_AT_producer\s*:/.test(line)) line = line.replace(/(DW_AT_producer\s*:).*$/, '$1 <producer>');
    current.push(line);
  }
  for (const lines of parts.values()) while (lines.length > 0 && lines[lines.length - 1] === '') lines.pop();
  return parts;
}

/** The whole normalised DWARF dump as text (DW_AT_producer kept unless asked otherwise). */
export function debugDump(path: string, options: DumpOptions = { dropProducer: false }): string {
  const out: string[] = [];
  for (const [section, lines] of debugDumpBySection(path, options)) out.push(`== ${section}`, ...lines);
  return out.join('\n');
}

export interface CompileUnit {
  name?: string;
  compDir?: string;
  producer?: string;
  dwoName?: string;
  language?: string;
}

/** The attributes of each DW_TAG_compile_unit / DW_TAG_skeleton_unit, from the normalised dump. */
export function compileUnits(path: string): CompileUnit[] {
  const info = infoLines(debugDumpBySection(path, { dropProducer: false }));
  const units: CompileUnit[] = [];
  let unit: CompileUnit | undefined;
  for (const line of info) {
    if (/^\s*<0><[0-9a-f]+>:.*DW_TAG_(compile|skeleton|partial)_unit/.test(line)) {
      unit = {};
      units.push(unit);
      continue;
    }
    if (/^\s*<[1-9]\d*></.test(line)) unit = undefined;
    if (!unit) continue;
    const attr = /^\s*<[0-9a-f]+>\s+(DW_AT_\w+)\s*:/.exec(line)?.[1];
    if (attr === 'DW_AT_name') unit.name = attributeValue(line);
    else if (attr === 'DW_AT_comp_dir') unit.compDir = attributeValue(line);
    else if (attr === 'DW_AT_producer') unit.producer = attributeValue(line);
    else if (attr === 'DW_AT_dwo_name' || attr === 'DW_AT_GNU_dwo_name') unit.dwoName = attributeValue(line);
    else if (attr === 'DW_AT_language') unit.language = attributeValue(line);
  }
  return units;
}

function clip(text: string | undefined, max = 160): string {
  if (text === undefined) return '<end>';
  const t = text.trim();
  return JSON.stringify(t.length > max ? `${t.slice(0, max)}…` : t);
}

/** The first differing line of two line lists, as one readable line, or undefined. */
function firstLineDifference(section: string, a: string[], b: string[]): string | undefined {
  const n = Math.max(a.length, b.length);
  for (let i = 0; i < n; i++) {
    if (a[i] !== b[i]) {
      return `${section}: line ${i + 1} of ${a.length}/${b.length}: local ${clip(a[i])} vs remote ${clip(b[i])}`;
    }
  }
  return undefined;
}

function firstByteDifference(section: string, a: Buffer, b: Buffer): string | undefined {
  if (a.equals(b)) return undefined;
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  const hex = (buf: Buffer) => (i < buf.length ? buf.subarray(i, i + 8).toString('hex') : '<end>');
  return `${section}: ${a.length} vs ${b.length} bytes, first difference at 0x${i.toString(16)}: local ${hex(a)} vs remote ${hex(b)}`;
}

/** The relocation sections of `readelf -r -W`, entries normalised for those that apply to .debug_*. */
function relocations(path: string, file: Buffer, list: Section[], producers: Set<string>): Map<string, string[]> {
  const tables = new Map<string, ReturnType<typeof stringTable>>();
  for (const s of list) if (s.name === '.debug_str' || s.name === '.debug_line_str') tables.set(s.name, stringTable(contents(file, s)));
  const result = new Map<string, string[]>();
  const seen = new Map<string, number>();
  let current: string[] | undefined;
  let debug = false;
  for (const line of readelf(['-r', '-W'], path).split('\n')) {
    const header = /^Relocation section '([^']+)' at offset 0x[0-9a-f]+ contains (\d+) entr/.exec(line);
    if (header) {
      const n = seen.get(header[1]) ?? 0;
      seen.set(header[1], n + 1);
      current = [`${header[2]} entries`];
      result.set(n === 0 ? header[1] : `${header[1]}#${n}`, current);
      debug = isDebugRelocation(header[1]);
      continue;
    }
    if (!current || !/^[0-9a-f]{8,}\s/.test(line)) continue;
    let entry = line.trimEnd();
    if (debug) {
      entry = entry.replace(/(\.debug_(?:line_)?str) \+ ([0-9a-f]+)$/, (_all, name: string, addend: string) => {
        const table = tables.get(name);
        if (!table) return `${name} + ${addend}`;
        const text = table.at(parseInt(addend, 16));
        return `${name} → ${producers.has(text) ? '<producer>' : JSON.stringify(text)}`;
      });
    }
    current.push(entry);
  }
  return result;
}

/** Strings of a string section other than producers, sorted. */
function stringSet(data: Buffer, producers: Set<string>): string[] {
  return stringTable(data)
    .all.filter((s) => !producers.has(s))
    .sort();
}

function stringSetDifference(section: string, a: string[], b: string[]): string | undefined {
  const count = (list: string[]) => list.reduce((m, s) => m.set(s, (m.get(s) ?? 0) + 1), new Map<string, number>());
  const ca = count(a);
  const cb = count(b);
  const onlyLocal = [...ca].filter(([s, n]) => (cb.get(s) ?? 0) < n).map(([s]) => s);
  const onlyRemote = [...cb].filter(([s, n]) => (ca.get(s) ?? 0) < n).map(([s]) => s);
  if (onlyLocal.length === 0 && onlyRemote.length === 0) return undefined;
  return `${section}: strings only in local ${clip(onlyLocal.slice(0, 3).join(' | ') || '(none)')} (${onlyLocal.length}), only in remote ${clip(onlyRemote.slice(0, 3).join(' | ') || '(none)')} (${onlyRemote.length})`;
}

/** Compares two ELF objects; see the file comment for what counts as a difference. */
export function compareObjects(localPath: string, remotePath: string): ObjectComparison {
  if (readFileSync(localPath).equals(readFileSync(remotePath))) return { identical: true, differences: [] };
  return withDecompressed([localPath, remotePath], ([local, remote]) => compareSections(local, remote));
}

function compareSections(localPath: string, remotePath: string): ObjectComparison {
  const localFile = readFileSync(localPath);
  const remoteFile = readFileSync(remotePath);

  const differences: string[] = [];
  const localSections = sections(localPath);
  const remoteSections = sections(remotePath);
  const names = (list: Section[]) => list.map((s) => s.name);
  const sameList = firstLineDifference('section list', names(localSections), names(remoteSections));
  if (sameList) differences.push(sameList);
  const remoteByKey = new Map(remoteSections.map((s) => [s.key, s]));

  const localDump = dumpBySection(localPath, { dropProducer: false });
  const remoteDump = dumpBySection(remotePath, { dropProducer: false });
  const localProducers = producersIn(infoLines(localDump));
  const remoteProducers = producersIn(infoLines(remoteDump));
  const producers = new Set([...localProducers, ...remoteProducers]);
  const dropProducers = (dump: Map<string, string[]>) => {
    for (const lines of dump.values()) {
      for (let i = 0; i < lines.length; i++) lines[i] = lines[i].replace(/(DW_AT_producer\s*:).*$/, '$1 <producer>');
    }
  };
  dropProducers(localDump);
  dropProducers(remoteDump);
  const localRelocations = relocations(localPath, localFile, localSections, producers);
  const remoteRelocations = relocations(remotePath, remoteFile, remoteSections, producers);

  for (const local of localSections) {
    const remote = remoteByKey.get(local.key);
    if (!remote) {
      if (!sameList) differences.push(`${local.key}: only in the local object`);
      continue;
    }
    const header = (s: Section) => `${s.type} flags=${s.flags} entsize=${s.entsize} link=${s.link} info=${s.info} align=${s.align}`;
    if (header(local) !== header(remote)) differences.push(`${local.key}: section header: local ${header(local)} vs remote ${header(remote)}`);

    if (STRING_SECTIONS.has(local.name)) {
      const d = stringSetDifference(local.key, stringSet(contents(localFile, local), producers), stringSet(contents(remoteFile, remote), producers));
      if (d) differences.push(d);
    } else if (local.name.startsWith('.debug_str_offsets')) {
      // Indices into the string table, in the table's (hash) order: compared as the strings they name.
      const named = (file: Buffer, list: Section[]) => {
        const strx = strxResolver(file, list, local.name.endsWith('.dwo') ? '.dwo' : '');
        const count = Math.floor(contents(file, list.find((s) => s.key === local.key)!).length / 4);
        const out: string[] = [];
        for (let i = 0; strx && i < count; i++) out.push(strx(i));
        return out.filter((x) => !producers.has(x) && !x.startsWith('<bad strx')).sort();
      };
      const d = stringSetDifference(local.key, named(localFile, localSections), named(remoteFile, remoteSections));
      if (d) differences.push(d);
    } else if (isDebugRelocation(local.name)) {
      const d = firstLineDifference(local.key, localRelocations.get(local.key) ?? [], remoteRelocations.get(local.key) ?? []);
      if (d) differences.push(d);
    } else if (isDebug(local.name) && localDump.has(local.key)) {
      // Compared through the dump below.
    } else {
      if (local.size !== remote.size && local.type === 'NOBITS') differences.push(`${local.key}: ${local.size} vs ${remote.size} bytes`);
      const d = firstByteDifference(local.key, contents(localFile, local), contents(remoteFile, remote));
      if (d) differences.push(d);
    }
  }
  for (const remote of remoteSections) {
    if (!localSections.some((s) => s.key === remote.key) && !sameList) differences.push(`${remote.key}: only in the remote object`);
  }
  const dumpKeys = [...new Set([...localDump.keys(), ...remoteDump.keys()])].filter((k) => isDebug(k) && !k.startsWith('.debug_str_offsets'));
  for (const key of dumpKeys) {
    const d = firstLineDifference(key, localDump.get(key) ?? [], remoteDump.get(key) ?? []);
    if (d) differences.push(d);
  }
  return { identical: false, differences, producers: { local: localProducers, remote: remoteProducers } };
}
