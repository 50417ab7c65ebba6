#!/usr/bin/env node
// Compile contracts/*.sol with the pinned npm solc into one JSON artifact per contract.
// Reproducible: relative source names, no metadata hash, sorted keys, fixed settings.
// Usage: node scripts/compile-contracts.mjs [out-dir]   (default: fabstir_tui/engine/chain/artifacts)
import { readFileSync, readdirSync, writeFileSync, mkdirSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const require = createRequire(import.meta.url);
const solc = require(join(root, "node_modules", "solc"));

const outDir = resolve(process.argv[2] ?? join(root, "fabstir_tui", "engine", "chain", "artifacts"));
const settings = {
  optimizer: { enabled: true, runs: 200 },
  // Cancun: what Base runs and what anvil 1.7.1 executes (it defaults to a later fork).
  evmVersion: "cancun",
  metadata: { bytecodeHash: "none" },
  outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] } },
};

const sources = {};
for (const file of readdirSync(join(root, "contracts")).filter((f) => f.endsWith(".sol")).sort()) {
  sources[`contracts/${file}`] = { content: readFileSync(join(root, "contracts", file), "utf8") };
}

const output = JSON.parse(solc.compile(JSON.stringify({ language: "Solidity", sources, settings })));
const errors = (output.errors ?? []).filter((e) => e.severity === "error");
for (const e of output.errors ?? []) process.stderr.write(e.formattedMessage + "\n");
if (errors.length > 0) process.exit(1);

function sorted(value) {
  if (Array.isArray(value)) return value.map(sorted);
  if (value !== null && typeof value === "object") {
    return Object.fromEntries(Object.keys(value).sort().map((k) => [k, sorted(value[k])]));
  }
  return value;
}

mkdirSync(outDir, { recursive: true });
for (const f of readdirSync(outDir).filter((f) => f.endsWith(".json"))) rmSync(join(outDir, f));
const written = [];
for (const [sourceName, contracts] of Object.entries(output.contracts)) {
  for (const [contractName, c] of Object.entries(contracts)) {
    if (!c.evm.bytecode.object) continue; // interfaces and abstract contracts
    const artifact = sorted({
      contractName,
      sourceName,
      compiler: `solc ${solc.version()}`,
      settings: { optimizer: settings.optimizer, evmVersion: settings.evmVersion },
      abi: c.abi,
      bytecode: `0x${c.evm.bytecode.object}`,
      deployedBytecode: `0x${c.evm.deployedBytecode.object}`,
    });
    writeFileSync(join(outDir, `${contractName}.json`), JSON.stringify(artifact, null, 2) + "\n");
    written.push(contractName);
  }
}
process.stdout.write(`compiled ${written.sort().join(", ")} -> ${outDir}\n`);
