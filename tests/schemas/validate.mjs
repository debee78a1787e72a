// Validates rendered custom resources (KEDA, prometheus-operator, cert-manager) against the models their
// projects' schemas are published as on npm, with unknown fields rejected.
//
// Two checks per document, because neither alone is strict:
// - the models' runtime validators (generated from the projects' Go API types, the same types
//   their CRDs are generated from) check types, formats and required fields, but let unknown
//   fields through;
// - TypeScript's excess-property check, over the document written as a typed object literal,
//   rejects any field the types do not declare, at every depth (as `kubectl apply
//   --validate=strict` does against a CRD's structural schema).
//
// usage: node validate.mjs <deps dir> <documents.json>
// The deps dir is where scripts/install-test-deps.sh ran `npm ci` on this folder's lock file.
// Prints one line per document ("ok Kind/name" or "FAIL Kind/name: path: message") and exits
// 1 if any failed, 2 on a usage error or a kind it has no model for.
import { readFileSync, writeFileSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";

const MODELS = {
  "keda.sh/v1alpha1 ScaledJob": "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledJob",
  "keda.sh/v1alpha1 ScaledObject": "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject",
  "keda.sh/v1alpha1 TriggerAuthentication":
    "@kubernetes-models/keda/keda.sh/v1alpha1/TriggerAuthentication",
  "keda.sh/v1alpha1 ClusterTriggerAuthentication":
    "@kubernetes-models/keda/keda.sh/v1alpha1/ClusterTriggerAuthentication",
  "cert-manager.io/v1 Certificate": "@kubernetes-models/cert-manager/cert-manager.io/v1/Certificate",
  "cert-manager.io/v1 Issuer": "@kubernetes-models/cert-manager/cert-manager.io/v1/Issuer",
  "cert-manager.io/v1 ClusterIssuer":
    "@kubernetes-models/cert-manager/cert-manager.io/v1/ClusterIssuer",
  "monitoring.coreos.com/v1 ServiceMonitor":
    "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor",
  "monitoring.coreos.com/v1 PodMonitor":
    "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PodMonitor",
  "monitoring.coreos.com/v1 PrometheusRule":
    "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule",
};

function usage(message) {
  console.error(message);
  process.exit(2);
}

const [depsArg, input] = process.argv.slice(2);
if (!depsArg || !input) usage("usage: node validate.mjs <deps dir> <documents.json>");
const deps = resolve(depsArg);
const modules = join(deps, "node_modules");
const require = createRequire(join(deps, "package.json"));
const ts = require("typescript");
let documents;
try {
  documents = JSON.parse(readFileSync(input, "utf8"));
} catch (error) {
  usage(`${input}: ${error.message}`);
}
if (!Array.isArray(documents)) usage(`${input}: expected a JSON array of objects`);

const versions = [
  "@kubernetes-models/keda",
  "@kubernetes-models/prometheus-operator",
  "@kubernetes-models/cert-manager",
  "typescript",
]
  .map((name) => `${name} ${JSON.parse(readFileSync(join(modules, name, "package.json"))).version}`);
console.log(`validators: ${versions.join(", ")}`);

const checked = documents.map((doc, index) => {
  const key = `${doc?.apiVersion} ${doc?.kind}`;
  const model = MODELS[key];
  if (!model) usage(`document ${index}: no model for ${key}`);
  return { doc, index, model, label: `${doc.kind}/${doc.metadata?.name}`, problems: [] };
});

// Runtime validators.
for (const item of checked) {
  const exports = await import(pathToFileURL(join(modules, `${item.model}.js`)).href);
  try {
    new exports[item.doc.kind](item.doc).validate();
  } catch (error) {
    for (const message of String(error.message).split(", ")) {
      item.problems.push(message.replace(/^data\//, "").replaceAll("/", "."));
    }
  }
}

// Each document as a typed literal, one property per line, so a diagnostic's line names
// the field it is about.
function emit(value, path, prefix, suffix, lines, item) {
  const pad = " ".repeat(path.length + 1);
  if (item.masked.has(path.join("."))) {
    lines.push({ text: `${pad}${prefix}(null as any)${suffix}`, path, item });
  } else if (value !== null && typeof value === "object") {
    const array = Array.isArray(value);
    const entries = array ? value.map((v, i) => [i, v]) : Object.entries(value);
    lines.push({ text: `${pad}${prefix}${array ? "[" : "{"}`, path, item });
    entries.forEach(([key, child], n) => {
      const separator = n + 1 < entries.length ? "," : "";
      const name = array ? "" : `${JSON.stringify(String(key))}: `;
      emit(child, [...path, key], name, separator, lines, item);
    });
    lines.push({ text: `${pad}${array ? "]" : "}"}${suffix}`, path, item });
  } else {
    lines.push({ text: `${pad}${prefix}${JSON.stringify(value)}${suffix}`, path, item });
  }
}

// TypeScript stops at the first problem in a literal. So each round removes the unknown fields
// found (from a copy) and masks the mistyped values as `any`, and the check is repeated until
// nothing new is found: every problem is listed, not only the first.
const EXCESS_PROPERTY = new Set([2353, 2561]);
const typed = checked.map((item) => ({
  ...item,
  doc: structuredClone(item.doc),
  found: new Set(),
  masked: new Set(),
}));
const source = join(deps, `check-${process.pid}.mts`);
try {
  for (let round = 0; round < 50; round += 1) {
    const lines = typed.map((item) => ({
      text: `import type { I${item.doc.kind} as T${item.index} } from "${item.model}";`,
    }));
    for (const item of typed) {
      lines.push({ text: `export const doc${item.index}: T${item.index} =`, path: [], item });
      emit(item.doc, [], "", ";", lines, item);
    }
    writeFileSync(source, lines.map((line) => line.text).join("\n"));
    const program = ts.createProgram([source], {
      strict: true,
      noEmit: true,
      skipLibCheck: true,
      module: ts.ModuleKind.NodeNext,
      moduleResolution: ts.ModuleResolutionKind.NodeNext,
      target: ts.ScriptTarget.ES2022,
      types: [],
    });
    let progress = 0;
    for (const diagnostic of ts.getPreEmitDiagnostics(program)) {
      const message = ts.flattenDiagnosticMessageText(diagnostic.messageText, " ");
      if (!diagnostic.file) usage(`typescript: ${message}`);
      const { line } = diagnostic.file.getLineAndCharacterOfPosition(diagnostic.start);
      const { item, path } = lines[line];
      if (!item) usage(`typescript, outside any document: ${message}`);
      const at = path.join(".");
      if (!path.length || item.masked.has(at)) {
        item.found.add(`${at || "(document)"}: ${message}`);
      } else if (EXCESS_PROPERTY.has(diagnostic.code)) {
        item.found.add(`${at}: ${message}`);
        const parent = path.slice(0, -1).reduce((node, key) => node[key], item.doc);
        delete parent[path[path.length - 1]];
        progress += 1;
      } else {
        item.found.add(`${at}: ${message}`);
        item.masked.add(at);
        progress += 1;
      }
    }
    if (!progress) break;
  }
} finally {
  rmSync(source, { force: true });
}
typed.forEach((item, n) => checked[n].problems.push(...item.found));

let failed = 0;
for (const item of checked) {
  if (item.problems.length) {
    failed += 1;
    console.log(`FAIL ${item.label}: ${item.problems.join("; ")}`);
  } else {
    console.log(`ok ${item.label}`);
  }
}
process.exit(failed ? 1 : 0);
