#!/usr/bin/env node
// Semantic check of KQL queries with Microsoft's Kusto.Language analyzer
// (npm package @kusto/language-service-next, tested with 12.4.1, no dependencies).
//
// Usage: node check.js INPUT.json      (or "-" to read the JSON from stdin)
//
// The package is loaded from $KUSTO_LANGUAGE_DIR/node_modules/@kusto/language-service-next,
// default <repo>/.tools/kusto (install with
// `npm install --prefix .tools/kusto @kusto/language-service-next@12.4.1`).
//
// Input:
//   {"database": {"name": "workspace",
//                 "tables": [{"name": "T_CL", "columns": [{"name": "C", "type": "string"}]}],
//                 "functions": [{"name": "F", "parameters": "", "body": "union isfuzzy=true T, T_CL"}]},
//    "queries": [{"id": "q1", "text": "F | take 1"}],
//    "options": {"closeFuzzySchemas": true}}            // optional, default true
// Output (stdout): [{"id": "q1", "errors": [{"code", "message", "line", "column", "severity"}]}]
//   Only diagnostics of severity Error; line/column are 1-based.
// Exit: 0 input read (even if queries have errors); 2 unreadable/invalid input;
//       3 analyzer package could not be loaded.
//
// Function schemas and `union isfuzzy=true`: a table missing from the database inside a
// fuzzy union is only a warning (KS205), but Kusto.Language then makes the union's schema
// *open*, which silently disables unknown-column checks (KS142) in every query calling the
// function. Log Analytics itself simply ignores the missing table. So, unless
// options.closeFuzzySchemas is false, each function whose body yields an open table is
// re-bound once in a scratch database where the fuzzy-missing names exist as empty tables;
// if that gives a closed schema, the function is declared with that schema as its return
// type (same parameters). The missing tables are never added to the database the queries
// see, so a query naming such a table directly still gets KS204.
'use strict';

const fs = require('fs');
const path = require('path');

function fail(code, msg) {
  process.stderr.write(String(msg).replace(/\s+/g, ' ').trim() + '\n');
  process.exit(code);
}

// ---------------------------------------------------------------- load package
const kustoDir = process.env.KUSTO_LANGUAGE_DIR
  ? path.resolve(process.env.KUSTO_LANGUAGE_DIR)
  : path.resolve(__dirname, '..', '..', '..', '.tools', 'kusto');
const pkgDir = path.join(kustoDir, 'node_modules', '@kusto', 'language-service-next');
try {
  require(path.join(pkgDir, 'bridge.js')); // defines globals Bridge, System
  require(path.join(pkgDir, 'Kusto.Language.Bridge.js')); // defines global Kusto
} catch (e) {
  fail(3, `cannot load @kusto/language-service-next from ${pkgDir}: ${e.message}`);
}
/* global Bridge, Kusto */
const K = Kusto.Language;
const S = K.Symbols;

// ---------------------------------------------------------------- read input
const arg = process.argv[2];
if (!arg) fail(2, 'usage: check.js INPUT.json | -');
let input;
try {
  const raw = fs.readFileSync(arg === '-' ? 0 : arg, 'utf8');
  input = JSON.parse(raw);
} catch (e) {
  fail(2, `cannot read input ${arg}: ${e.message}`);
}
if (!input || typeof input !== 'object' || !Array.isArray(input.queries)) {
  fail(2, 'invalid input: expected an object with a "queries" array');
}
const dbIn = input.database || {};
const options = Object.assign({ closeFuzzySchemas: true }, input.options || {});

// ---------------------------------------------------------------- schema
const TYPE_ALIASES = {
  boolean: 'bool', double: 'real', float: 'real', int32: 'int', int64: 'long',
  uniqueidentifier: 'guid', object: 'dynamic',
  'system.string': 'string', 'system.int32': 'int', 'system.int64': 'long',
  'system.double': 'real', 'system.single': 'real', 'system.boolean': 'bool',
  'system.sbyte': 'bool', 'system.datetime': 'datetime', 'system.guid': 'guid',
  'system.object': 'dynamic', 'system.timespan': 'timespan',
  'system.data.sqltypes.sqldecimal': 'decimal', 'system.decimal': 'decimal',
};

function scalarType(t, where) {
  const key = String(t == null ? '' : t).trim().toLowerCase();
  const sym = S.ScalarTypes.GetSymbol(TYPE_ALIASES[key] || key);
  if (!sym) fail(2, `invalid input: unknown column type ${JSON.stringify(t)} for ${where}`);
  return sym;
}

function paramList(p) {
  const s = String(p == null ? '' : p).trim();
  return s.startsWith('(') ? s : `(${s})`;
}

let tables;
let fnDefs;
try {
  tables = (dbIn.tables || []).map((t) => {
    if (!t || typeof t.name !== 'string') throw new Error('table without a name');
    const cols = (t.columns || []).map((c) => {
      if (!c || typeof c.name !== 'string') throw new Error(`column without a name in ${t.name}`);
      return new S.ColumnSymbol(c.name, scalarType(c.type, `${t.name}.${c.name}`), null, null, null, null);
    });
    return new S.TableSymbol.$ctor4(t.name, cols);
  });
  fnDefs = (dbIn.functions || []).map((f) => {
    if (!f || typeof f.name !== 'string' || typeof f.body !== 'string') {
      throw new Error('function needs a "name" and a "body" string');
    }
    return { name: f.name, params: paramList(f.parameters), body: f.body };
  });
} catch (e) {
  fail(2, `invalid input: ${e.message}`);
}
const dbName = typeof dbIn.name === 'string' && dbIn.name ? dbIn.name : 'workspace';

const bodyFunction = (f) => new S.FunctionSymbol.$ctor16(f.name, f.params, f.body, null);
const globalsFor = (members) =>
  K.GlobalState.Default.WithDatabase(new S.DatabaseSymbol.ctor(dbName, members));

let globals;
try {
  globals = globalsFor([...tables, ...fnDefs.map(bodyFunction)]);
} catch (e) {
  fail(2, `invalid input: cannot build database schema: ${e.message}`);
}

// Binds a function body on its own (its scalar parameters declared as query parameters);
// null when a parameter is not a plain scalar.
function analyzeBody(f, g) {
  const params = Bridge.toArray(S.Parameter.ParseList(f.params));
  const syms = [];
  for (const p of params) {
    const types = p.DeclaredTypes ? Bridge.toArray(p.DeclaredTypes) : [];
    // untyped, multi-typed or tabular parameter: the schema may depend on the call, give up
    if (types.length !== 1 || !Bridge.is(types[0], S.ScalarSymbol)) return null;
    syms.push(new S.ParameterSymbol(p.Name, types[0], null));
  }
  return K.KustoCode.ParseAndAnalyze(f.body, syms.length ? g.AddParameters(syms) : g);
}

function unquoteName(s) {
  const m = /^\[\s*(['"])(.*)\1\s*\]$/.exec(s.trim());
  return m ? m[2] : s.trim();
}

if (options.closeFuzzySchemas && fnDefs.length) {
  try {
    const known = new Set(tables.map((t) => t.Name));
    const fuzzyMissing = new Set();
    const openFns = [];
    for (const f of fnDefs) {
      const code = analyzeBody(f, globals);
      if (!code) continue;
      for (const d of Bridge.toArray(code.GetDiagnostics())) {
        if (d.Code === 'KS205' && d.HasLocation) {
          const name = unquoteName(f.body.substr(d.Start, d.Length));
          if (name && !known.has(name)) fuzzyMissing.add(name);
        }
      }
      const rt = code.ResultType;
      if (rt && Bridge.is(rt, S.TableSymbol) && rt.IsOpen) openFns.push(f);
    }
    if (fuzzyMissing.size && openFns.length) {
      const placeholders = [...fuzzyMissing].map((n) => new S.TableSymbol.$ctor4(n, []));
      const scratch = globalsFor([...tables, ...placeholders, ...fnDefs.map(bodyFunction)]);
      const closed = new Map();
      for (const f of openFns) {
        const code = analyzeBody(f, scratch);
        const rt = code && code.ResultType;
        if (rt && Bridge.is(rt, S.TableSymbol) && !rt.IsOpen) {
          const schema = new S.TableSymbol.ctor(Bridge.toArray(rt.Columns));
          closed.set(f.name, new S.FunctionSymbol.$ctor6(f.name, schema, S.Parameter.ParseList(f.params), null));
        }
      }
      if (closed.size) {
        globals = globalsFor([...tables, ...fnDefs.map((f) => closed.get(f.name) || bodyFunction(f))]);
      }
    }
  } catch (e) {
    // keep the plain body-based declarations
  }
}

// ---------------------------------------------------------------- check queries
function position(code, pos) {
  const line = { v: 1 };
  const col = { v: 1 };
  if (!code.TryGetLineAndOffset(pos, line, col)) return { line: 1, column: 1 };
  return { line: line.v, column: col.v };
}

const results = input.queries.map((q, i) => {
  const id = q && q.id !== undefined ? q.id : String(i);
  const text = q && typeof q.text === 'string' ? q.text : '';
  try {
    const code = K.KustoCode.ParseAndAnalyze(text, globals);
    const errors = Bridge.toArray(code.GetDiagnostics())
      .filter((d) => d.Severity === 'Error')
      .map((d) => {
        const at = position(code, d.HasLocation ? d.Start : 0);
        return { code: d.Code, message: d.Message, line: at.line, column: at.column, severity: d.Severity };
      });
    return { id, errors };
  } catch (e) {
    return { id, errors: [{ code: 'ANALYZER_EXCEPTION', message: String(e && e.message), line: 1, column: 1, severity: 'Error' }] };
  }
});

process.stdout.write('[\n' + results.map((r) => JSON.stringify(r)).join(',\n') + '\n]\n');
