/**
 * One pure decision over a compiler command line: distribute it, or run it locally with a named
 * reason. Options are described once, in a declarative table (after sccache's gcc.rs): what each
 * option is for decides whether it goes to the local preprocessor, to the remote compile, to both,
 * or keeps the job local.
 */
import { basename, dirname, extname, isAbsolute, join } from 'node:path';

export type Language = 'C' | 'CXX' | 'OBJC' | 'OBJCXX';

/** Why a job stays local; each is a statistic users see counted in `ferry stats`. */
export type LocalReason =
  | 'not-a-compile' // no -c or -S: linking, or only querying the compiler
  | 'preprocess-only' // -E, -M, -MM
  | 'no-source'
  | 'multiple-sources'
  | 'stdin-source'
  | 'output-to-stdout'
  | 'unsupported-language' // assembler, headers (precompiled headers), unknown extension
  | 'unsupported-option'
  | 'unsupported-compiler'
  | 'configure-probe' // autoconf's conftest.c and CMake's compiler checks: tiny, and they probe this machine
  | 'native-arch' // -march=native and friends describe this machine, not the remote one
  | 'debug-macros' // -g3: the split at -fdirectives-only changes the macro information
  | 'split-dwarf' // -gsplit-dwarf with an output the worker cannot name the same way (absolute, ..)
  | 'records-command-line' // -frecord-gcc-switches writes the remote command line into the object
  | 'syntax-only'
  | 'clang-debug-info' // clang -g: DWARF 5 line tables hash the source file, which the remote one is not
  | 'ccache-in-front'; // `ferry ccache gcc`: ccache runs first and sends its misses back to ferry

export type CompilerFamily = 'gcc' | 'clang';

export interface RemotePlan {
  /** The compiler as the user named it. */
  compiler: string;
  /** gcc preprocesses fully or with -fdirectives-only (cppMode), clang with -frewrite-includes. */
  family: CompilerFamily;
  language: Language;
  /** The source as named on the command line. */
  source: string;
  /** Already preprocessed (.i, .ii, -x cpp-output): sent as is. */
  preprocessed: boolean;
  /** What the compiler would write, as named (relative to the working directory or absolute). */
  output: string;
  outputKind: 'OBJECT' | 'ASSEMBLY';
  /** -gsplit-dwarf: the .dwo gcc writes beside the object, as named. */
  splitDwarf?: string;
  /** Arguments for the local preprocessor, without -E, the source and any output. */
  cppArgs: string[];
  /** Arguments for the remote compile, without the source and -o. */
  compileArgs: string[];
  /** gcc: how a job is preprocessed first (see cppModeOf); clang always rewrites includes only. */
  cppMode: CppMode;
}

/**
 * 'full' is plain `-E`, distcc's plain mode: the cheapest on both sides (the remote compiles
 * expanded tokens, a third of the bytes), and it gives a local build's object unless an option
 * records source columns. Its diagnostics can differ from a local build's (no macro context,
 * comments gone), so a job whose full run prints anything is done again 'directives-only':
 * `-fdirectives-only` leaves macros to the compiler, which then prints exactly what a local
 * build prints and writes its DWARF columns (facts.md part 3).
 */
export type CppMode = 'full' | 'directives-only';

/**
 * Options under which only the directives-only split gives a local build's output: they record
 * source positions with columns (debug information, coverage and profiles, sanitizers, LTO
 * bytecode, dumps, stack-usage files, verbose assembly) or the command line, or they print
 * analyses whose doubling would cost more than the full mode saves.
 */
const RECORDS_POSITIONS = /^(--coverage$|-ftest-coverage$|-fprofile-|-fauto-profile|-fsanitize=|-fdump-|-fstack-usage$|-fcallgraph-info|-flto|-fverbose-asm$|-fcompare-debug|-frecord-gcc-switches$|-fopt-info|-fanalyzer$)/;

/**
 * C only. C++'s standard headers make a full preprocess far dearer on the initiator, the machine
 * Ferry is there to spare (leveldb's db_impl.cc: 45 ms against 27 ms directives-only), while C
 * headers cost about the same either way (the bench's small file: 7.9 against 8.1 ms) and the full
 * output is a quarter of the size and 5-12 ms cheaper to compile remotely.
 */
export function cppModeOf(family: CompilerFamily, language: Language, args: readonly string[]): CppMode {
  if (family !== 'gcc' || (language !== 'C' && language !== 'OBJC')) return 'directives-only';
  if (wantsDebugInfo(args) || args.some((a) => RECORDS_POSITIONS.test(a))) return 'directives-only';
  return 'full';
}

export type Classification =
  | { decision: 'remote'; plan: RemotePlan }
  | { decision: 'local'; reason: LocalReason; detail: string };

/** Where an option goes. */
type Route =
  | 'cpp' // local preprocessor only (include paths, macros)
  | 'deps' // dependency files, written by the local preprocessor
  | 'both' // changes preprocessing and code generation alike (-O2 defines __OPTIMIZE__, -std, -f, -m, -W)
  | 'mode' // -c, -S, -E: handled by the classifier
  | 'output' // -o
  | 'language' // -x
  | 'drop' // meaningless for one compile (-pipe)
  | 'compile' // the remote compile only
  | 'local'; // keeps the job local

type Arity =
  | 'flag' // -c
  | 'separate' // -include FILE: the value is always the next argument
  | 'joined'; // -Ifoo or -I foo, -ofile or -o file: a prefix, the value joined or the next argument

interface OptionRule {
  /** Exact name, or prefix when `prefix` is set. */
  name: string;
  prefix?: boolean;
  arity: Arity;
  route: Route;
  /** For route 'local': the reason to report. */
  reason?: LocalReason;
}

const R = (name: string, arity: Arity, route: Route, extra: Partial<OptionRule> = {}): OptionRule => ({ name, arity, route, ...extra });
const P = (name: string, arity: Arity, route: Route, extra: Partial<OptionRule> = {}): OptionRule => ({ name, arity, route, prefix: true, ...extra });
const LOCAL = (name: string, prefix: boolean, reason: LocalReason = 'unsupported-option', arity: Arity = 'flag'): OptionRule => ({
  name,
  arity,
  route: 'local',
  prefix,
  reason,
});

/**
 * Ordered: the first rule that matches wins, so specific names come before the prefixes that
 * would also match them. Options not listed go to both sides, as in distcc and ccache.
 */
const OPTIONS: OptionRule[] = [
  // Mode and output.
  R('-c', 'flag', 'mode'),
  R('-S', 'flag', 'mode'),
  R('-E', 'flag', 'mode'),
  R('-M', 'flag', 'mode'),
  R('-MM', 'flag', 'mode'),
  P('-o', 'joined', 'output'),
  P('-x', 'joined', 'language'),
  R('-pipe', 'flag', 'drop'),
  // The preprocessor must always write the working-directory line marker: the remote compile takes
  // DW_AT_comp_dir from it (its own directory is a temporary one).
  R('-fno-working-directory', 'flag', 'compile'),
  R('-fsyntax-only', 'flag', 'local', { reason: 'syntax-only' }),
  // Dependency files: written on this machine by the preprocessor.
  R('-MD', 'flag', 'deps'),
  R('-MMD', 'flag', 'deps'),
  R('-MP', 'flag', 'deps'),
  R('-MG', 'flag', 'deps'),
  P('-MF', 'joined', 'deps'),
  P('-MT', 'joined', 'deps'),
  P('-MQ', 'joined', 'deps'),
  // Preprocessor only.
  P('-I', 'joined', 'cpp'),
  P('-D', 'joined', 'cpp'),
  P('-U', 'joined', 'cpp'),
  R('-include', 'separate', 'cpp'),
  R('-imacros', 'separate', 'cpp'),
  R('-iprefix', 'separate', 'cpp'),
  R('-iwithprefix', 'separate', 'cpp'),
  R('-iwithprefixbefore', 'separate', 'cpp'),
  R('-isysroot', 'separate', 'cpp'),
  P('-isystem', 'joined', 'cpp'),
  P('-iquote', 'joined', 'cpp'),
  P('-idirafter', 'joined', 'cpp'),
  P('--sysroot=', 'joined', 'cpp'),
  R('--sysroot', 'separate', 'cpp'),
  R('-nostdinc', 'flag', 'cpp'),
  R('-nostdinc++', 'flag', 'cpp'),
  R('-undef', 'flag', 'cpp'),
  R('-H', 'flag', 'cpp'),
  // Options for the preprocessor itself (-Wp,-MD,file writes the .d here, exactly as a local compile).
  R('-Xpreprocessor', 'separate', 'cpp'),
  P('-Wp,', 'joined', 'cpp'),
  // Options that load code, write extra files or describe this machine: local.
  LOCAL('-fplugin', true),
  LOCAL('-specs', true),
  LOCAL('--specs', true),
  LOCAL('-B', true),
  LOCAL('-wrapper', false, 'unsupported-option', 'separate'),
  LOCAL('-save-temps', true),
  LOCAL('--coverage', false),
  LOCAL('-fprofile-', true),
  LOCAL('-ftest-coverage', false),
  LOCAL('-fdump-', true),
  LOCAL('-fcallgraph-info', true),
  LOCAL('-fstack-usage', false),
  LOCAL('-frecord-gcc-switches', false, 'records-command-line'),
  LOCAL('-fdirectives-only', false),
  R('-gsplit-dwarf', 'flag', 'both'),
  LOCAL('-g3', false, 'debug-macros'),
  LOCAL('-ggdb3', false, 'debug-macros'),
  LOCAL('-march=native', false, 'native-arch'),
  LOCAL('-mtune=native', false, 'native-arch'),
  LOCAL('-mcpu=native', false, 'native-arch'),
  LOCAL('-aux-info', false, 'unsupported-option', 'separate'),
  LOCAL('-dumpbase', false, 'unsupported-option', 'separate'),
  LOCAL('-dumpdir', false, 'unsupported-option', 'separate'),
  LOCAL('-Xassembler', false, 'unsupported-option', 'separate'),
  LOCAL('-Xlinker', false, 'unsupported-option', 'separate'),
  LOCAL('-Xclang', false, 'unsupported-option', 'separate'),
  LOCAL('-Wa,', true),
  LOCAL('-print-', true, 'not-a-compile'),
  LOCAL('--version', false, 'not-a-compile'),
  LOCAL('-v', false, 'not-a-compile'),
  LOCAL('-###', false, 'not-a-compile'),
  LOCAL('-dumpmachine', false, 'not-a-compile'),
  LOCAL('-dumpversion', false, 'not-a-compile'),
  LOCAL('-dumpfullversion', false, 'not-a-compile'),
];

function findRule(arg: string): OptionRule | undefined {
  return OPTIONS.find((rule) => (rule.prefix ? arg.startsWith(rule.name) : arg === rule.name));
}

const EXTENSIONS: Record<string, { language: Language; preprocessed: boolean } | 'unsupported'> = {
  '.c': { language: 'C', preprocessed: false },
  '.i': { language: 'C', preprocessed: true },
  '.cc': { language: 'CXX', preprocessed: false },
  '.cp': { language: 'CXX', preprocessed: false },
  '.cxx': { language: 'CXX', preprocessed: false },
  '.cpp': { language: 'CXX', preprocessed: false },
  '.CPP': { language: 'CXX', preprocessed: false },
  '.c++': { language: 'CXX', preprocessed: false },
  '.C': { language: 'CXX', preprocessed: false },
  '.ii': { language: 'CXX', preprocessed: true },
  '.m': { language: 'OBJC', preprocessed: false },
  '.mi': { language: 'OBJC', preprocessed: true },
  '.mm': { language: 'OBJCXX', preprocessed: false },
  '.M': { language: 'OBJCXX', preprocessed: false },
  '.mii': { language: 'OBJCXX', preprocessed: true },
  '.s': 'unsupported',
  '.S': 'unsupported',
  '.sx': 'unsupported',
  '.h': 'unsupported',
  '.hh': 'unsupported',
  '.hpp': 'unsupported',
  '.hxx': 'unsupported',
  '.H': 'unsupported',
  '.gch': 'unsupported',
};

const X_LANGUAGES: Record<string, { language: Language; preprocessed: boolean }> = {
  c: { language: 'C', preprocessed: false },
  'cpp-output': { language: 'C', preprocessed: true },
  'c++': { language: 'CXX', preprocessed: false },
  'c++-cpp-output': { language: 'CXX', preprocessed: true },
  'objective-c': { language: 'OBJC', preprocessed: false },
  'objective-c-cpp-output': { language: 'OBJC', preprocessed: true },
  'objective-c++': { language: 'OBJCXX', preprocessed: false },
  'objective-c++-cpp-output': { language: 'OBJCXX', preprocessed: true },
};

/** gcc, g++, cc, c++ (or clang, clang++) with an optional target prefix and version suffix. */
const GCC_NAME = /^(?:[A-Za-z0-9_.]+(?:-[A-Za-z0-9_.]+)*-)?(?:gcc|g\+\+|cc|c\+\+)(?:-\d+(?:\.\d+)*)?$/;
const CLANG_NAME = /^(?:[A-Za-z0-9_.]+(?:-[A-Za-z0-9_.]+)*-)?(?:clang|clang\+\+)(?:-\d+(?:\.\d+)*)?$/;

export function compilerFamily(compiler: string): CompilerFamily | undefined {
  const name = basename(compiler);
  if (GCC_NAME.test(name)) return 'gcc';
  if (CLANG_NAME.test(name)) return 'clang';
  return undefined;
}

/**
 * clang's -frewrite-includes expands includes but not macros: macro options must reach the remote
 * compile too, and a few options have no equivalent there.
 */
const CLANG_BOTH = (arg: string) => arg.startsWith('-D') || arg.startsWith('-U');
const CLANG_LOCAL = (arg: string) =>
  arg === '-imacros' || arg.startsWith('-fmodules') || arg.startsWith('-fcoverage-mapping') || arg === '-gmodules' || arg.startsWith('-fprebuilt-module');

function isConfigureProbe(source: string): boolean {
  const name = basename(source);
  return (
    /^conftest\.[A-Za-z+]+$/.test(name) ||
    /(^|\/)CMakeFiles\/(CMakeScratch|CMakeTmp)\//.test(source) ||
    /CMake(C|CXX|OBJC|OBJCXX)CompilerId\.[A-Za-z+]+$/.test(name) ||
    /CMakeCCompilerABI\.c$|CMakeCXXCompilerABI\.cpp$/.test(name)
  );
}

const local = (reason: LocalReason, detail: string): Classification => ({ decision: 'local', reason, detail });

/** Debug information is on: the last -g option that is not -g0 wins, as for the compiler. */
export function wantsDebugInfo(args: readonly string[]): boolean {
  let on = false;
  for (const arg of args) {
    if (arg === '-g0') on = false;
    else if (arg.startsWith('-g') && !arg.startsWith('-gno-') && !arg.startsWith('-gcolumn-info') && arg !== '-gz') on = true;
  }
  return on;
}

/** The output a compiler names by itself: the source's base name with .o (or .s), in the working directory. */
export function impliedOutput(source: string, kind: 'OBJECT' | 'ASSEMBLY'): string {
  const name = basename(source);
  const ext = extname(name);
  return (ext ? name.slice(0, -ext.length) : name) + (kind === 'OBJECT' ? '.o' : '.s');
}

/** gcc's name for the .d file of -MD/-MMD without -MF: the output with its suffix replaced by .d. */
export function impliedDepFile(output: string): string {
  return replaceExtension(output, '.d');
}

/** gcc's sibling files: the output's last extension replaced (`obj/a.c.o` -> `obj/a.c.dwo`), or added. */
export function replaceExtension(path: string, ext: string): string {
  const name = basename(path);
  const dot = name.lastIndexOf('.');
  const stem = dot > 0 ? name.slice(0, dot) : name;
  const dir = dirname(path);
  return dir === '.' && !path.startsWith('./') ? stem + ext : join(dir, stem + ext);
}

/** A relative path without `..`: the worker can recreate it under its job directory. */
export function isPlainRelativePath(path: string): boolean {
  return !isAbsolute(path) && !path.split('/').some((segment) => segment === '..') && !path.includes('\0');
}

/**
 * Decides for `argv` = [compiler, ...args] (response files already expanded).
 */
export function classify(argv: readonly string[]): Classification {
  const [compiler, ...args] = argv;
  if (!compiler) return local('not-a-compile', 'no compiler named');
  if (basename(compiler) === 'ccache') return local('ccache-in-front', 'ccache runs first, with CCACHE_PREFIX=ferry');
  const family = compilerFamily(compiler);
  if (!family) {
    return local('unsupported-compiler', `${basename(compiler)} is not a gcc or clang compiler`);
  }

  let mode: '-c' | '-S' | undefined;
  let output: string | undefined;
  const sources: Array<{ path: string; language: Language; preprocessed: boolean }> = [];
  let xLanguage: { language: Language; preprocessed: boolean } | undefined;
  const cppArgs: string[] = [];
  const compileArgs: string[] = [];
  let depsRequested = false;
  let depFileGiven = false;
  let depTargetGiven = false;
  // Objects and libraries (a link), assembler sources and headers: decided once the mode is known.
  const linkerInputs: string[] = [];
  const unsupportedInputs: string[] = [];

  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    if (arg === '-') return local('stdin-source', 'source read from standard input');
    if (!arg.startsWith('-') || arg === '-') {
      // An input file.
      const kind = xLanguage ?? EXTENSIONS[extname(arg)];
      if (kind === undefined) linkerInputs.push(arg);
      else if (kind === 'unsupported') unsupportedInputs.push(arg);
      else sources.push({ path: arg, ...kind });
      continue;
    }
    if (family === 'clang' && CLANG_LOCAL(arg)) return local('unsupported-option', arg);
    const rule = findRule(arg);
    let value: string | undefined;
    let taken: string[] = [arg];
    const separate = rule && (rule.arity === 'separate' || (rule.arity === 'joined' && arg === rule.name));
    if (rule && separate) {
      value = args[i + 1];
      if (value === undefined) return local('unsupported-option', `${arg} needs a value`);
      taken = [arg, value];
      i++;
    } else if (rule && rule.prefix) {
      value = arg.slice(rule.name.length);
    }
    if (!rule) {
      cppArgs.push(arg);
      compileArgs.push(arg);
      continue;
    }
    switch (rule.route) {
      case 'mode':
        if (arg === '-E') return local('preprocess-only', '-E');
        if (arg === '-M' || arg === '-MM') return local('preprocess-only', `${arg} (dependencies only)`);
        if (mode && mode !== arg) return local('unsupported-option', `both ${mode} and ${arg}`);
        mode = arg as '-c' | '-S';
        break;
      case 'output':
        if (output !== undefined) return local('unsupported-option', 'more than one -o');
        output = value;
        break;
      case 'language': {
        if (value === 'none') {
          xLanguage = undefined;
        } else {
          const kind = X_LANGUAGES[value!];
          if (!kind) return local('unsupported-language', `-x ${value}`);
          xLanguage = kind;
        }
        cppArgs.push(...taken);
        // clang compiles a source file (not cpp output) remotely; its language must be said again.
        // Joined (-xc++): the worker takes options only, never a lone value.
        if (family === 'clang') compileArgs.push(taken.join(''));
        break;
      }
      case 'cpp':
        cppArgs.push(...taken);
        if (family === 'clang' && CLANG_BOTH(arg)) compileArgs.push(taken.join(''));
        break;
      case 'deps':
        if (arg === '-MD' || arg === '-MMD') depsRequested = true;
        if (arg.startsWith('-MF')) depFileGiven = true;
        if (arg.startsWith('-MT') || arg.startsWith('-MQ')) depTargetGiven = true;
        cppArgs.push(...taken);
        break;
      case 'both':
        cppArgs.push(...taken);
        compileArgs.push(...taken);
        break;
      case 'drop':
        break;
      case 'compile':
        compileArgs.push(...taken);
        break;
      case 'local':
        return local(rule.reason ?? 'unsupported-option', arg);
    }
  }

  if (!mode) return local('not-a-compile', 'no -c or -S: linking or a query');
  if (family === 'clang' && wantsDebugInfo(args)) {
    return local('clang-debug-info', 'clang -g records an MD5 of the source in its line table; the remote source differs');
  }
  if (unsupportedInputs.length > 0) {
    return local('unsupported-language', `${unsupportedInputs[0]}: assembler sources and headers compile locally`);
  }
  if (linkerInputs.length > 0) return local('unsupported-language', `${linkerInputs[0]}: not a C or C++ source`);
  if (sources.length === 0) return local('no-source', 'no source file');
  if (sources.length > 1) return local('multiple-sources', `${sources.length} source files`);
  const [source] = sources;
  if (output === '-') return local('output-to-stdout', '-o -');
  if (output === '/dev/null') return local('output-to-stdout', '-o /dev/null');
  if (isConfigureProbe(source.path)) return local('configure-probe', basename(source.path));

  const outputKind = mode === '-c' ? 'OBJECT' : 'ASSEMBLY';
  const finalOutput = output ?? impliedOutput(source.path, outputKind);
  // The preprocessor writes the .d file; with -E it would name it and its target after the
  // preprocessed output, so both are made explicit as the compile would have made them.
  if (depsRequested && !source.preprocessed) {
    if (!depFileGiven) cppArgs.push('-MF', impliedDepFile(finalOutput));
    if (!depTargetGiven) cppArgs.push('-MQ', finalOutput);
  }
  let splitDwarf: string | undefined;
  if (args.includes('-gsplit-dwarf') && wantsDebugInfo(args) && mode === '-c') {
    // gcc records the .dwo's name as derived from -o; the worker recreates that relative name.
    if (!isPlainRelativePath(finalOutput)) {
      return local('split-dwarf', `-gsplit-dwarf with output ${finalOutput}: the .dwo name would differ remotely`);
    }
    splitDwarf = replaceExtension(finalOutput, '.dwo');
  }
  compileArgs.push(mode);
  return {
    decision: 'remote',
    plan: {
      compiler,
      family,
      language: source.language,
      source: source.path,
      preprocessed: source.preprocessed,
      output: finalOutput,
      outputKind,
      splitDwarf,
      cppArgs,
      compileArgs,
      // An already preprocessed source is compiled as it is: there is no other way to try.
      cppMode: source.preprocessed ? 'directives-only' : cppModeOf(family, source.language, args),
    },
  };
}
