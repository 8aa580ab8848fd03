#!/usr/bin/env node
// Parses and checks Flux queries with InfluxData's own Flux implementation (the `flux` crate, as
// WebAssembly in @influxdata/flux-lsp-node). Reads a JSON array of {where, query, prelude} on stdin and
// writes a JSON array of {where, syntax: [messages], valid: bool}:
//   syntax: every error the parser attached to the AST (a query with one does not parse);
//   valid:  is_valid_flux(prelude + query), the semantic check (names, types, builtin signatures), with
//           `prelude` declaring what the host (Grafana, the InfluxDB UI, a check's task) injects, e.g. `v`.
"use strict";
const flux = require("@influxdata/flux-lsp-node");

function syntaxErrors(node, out) {
  if (Array.isArray(node)) {
    node.forEach((child) => syntaxErrors(child, out));
  } else if (node && typeof node === "object") {
    if (Array.isArray(node.errors)) {
      const where = node.location ? `${node.location.start.line}:${node.location.start.column}` : "?";
      node.errors.forEach((e) => out.push(`${where}: ${e.msg}`));
    }
    Object.values(node).forEach((child) => syntaxErrors(child, out));
  }
  return out;
}

// Imports must open a Flux file: the prelude goes after them.
function withPrelude(query, prelude) {
  if (!prelude) return query;
  const lines = query.split("\n");
  let i = 0;
  while (i < lines.length && (/^\s*import\s/.test(lines[i]) || /^\s*$/.test(lines[i]))) i++;
  return [...lines.slice(0, i), prelude, ...lines.slice(i)].join("\n");
}

let input = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk) => { input += chunk; });
process.stdin.on("end", () => {
  const results = JSON.parse(input).map(({ where, query, prelude }) => ({
    where,
    syntax: syntaxErrors(flux.parse(query), []),
    valid: flux.is_valid_flux(withPrelude(query, prelude)),
  }));
  process.stdout.write(JSON.stringify(results));
});
