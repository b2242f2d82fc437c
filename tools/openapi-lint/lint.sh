#!/usr/bin/env bash
# Lints an OpenAPI description with the Redocly CLI pinned in package.json (installed by
# `npm ci --prefix tools/openapi-lint`, which `make lint-openapi` does) and redocly.yaml beside
# this file. Fails on any error AND any warning: `redocly lint` itself exits 0 when there are only
# warnings and has no flag to change that (--max-problems only caps what is printed), so the
# problems are read from its JSON output and counted here.
# Usage: tools/openapi-lint/lint.sh build/openapi.json
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
spec=${1:?usage: $0 OPENAPI_FILE}
redocly="$here/node_modules/.bin/redocly"
if [ ! -x "$redocly" ]; then
  echo "lint-openapi: $redocly is missing; run 'npm ci --prefix tools/openapi-lint' (or 'make lint-openapi')" >&2
  exit 1
fi

# No network once installed: no usage telemetry, no "new version" look-up.
export REDOCLY_TELEMETRY=off REDOCLY_SUPPRESS_UPDATE_NOTICE=true

out=$(mktemp) err=$(mktemp)
trap 'rm -f "$out" "$err"' EXIT
# Exit 1 = errors found (still a report on stdout); anything else non-zero = the linter broke.
status=0
"$redocly" lint "$spec" --config "$here/redocly.yaml" --lint-config error \
  --format json --max-problems 100000 >"$out" 2>"$err" || status=$?
if [ "$status" -gt 1 ] || ! node -e 'JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")).totals.errors' "$out" 2>/dev/null; then
  cat "$err" >&2
  echo "lint-openapi: redocly lint did not produce a report (exit $status); see above" >&2
  exit 1
fi

# Prints the problems grouped by rule and exits 1 when there is any error or warning.
node - "$out" "$spec" <<'JS'
const fs = require("fs");
const [report, spec] = process.argv.slice(2);
const { totals, version, problems } = JSON.parse(fs.readFileSync(report, "utf8"));
const byRule = new Map();
for (const p of problems) {
  if (!byRule.has(p.ruleId)) byRule.set(p.ruleId, []);
  byRule.get(p.ruleId).push(p);
}
for (const [rule, list] of byRule) {
  const ref = list[0].reference ? `  ${list[0].reference}` : "";
  console.log(`\n${rule} (${list.length})${ref}`);
  for (const p of list) {
    const loc = p.location[0] || {};
    const at = loc.start ? `${spec}:${loc.start.line}:${loc.start.col}` : spec;
    console.log(`  ${p.severity === "error" ? "error  " : "warning"} ${at} ${loc.pointer || ""}`);
    console.log(`          ${p.message}`);
  }
}
const verdict = `${totals.errors} error(s), ${totals.warnings} warning(s), ${totals.ignored} ignored`;
if (totals.errors + totals.warnings > 0) {
  console.log(`\nlint-openapi: FAILED, ${verdict} (Redocly ${version}); the description must have none`);
  process.exitCode = 1;
} else {
  console.log(`lint-openapi: ${spec} is clean, ${verdict} (Redocly ${version}, recommended rules)`);
}
JS
