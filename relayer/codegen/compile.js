// Runs the pinned solc-js on one standard-JSON input. Started by relayer/codegen/compile.py:
//
//     node compile.js <solc-js package dir>   < standard-JSON input   > {"version": ..., "output": ...}
//
// Every source is passed in the input, so there is no file-system import callback: an import that is not among the
// sources fails with a message saying so. Nothing is downloaded (solc-js only fetches when asked for another version).
"use strict";

const solcDir = process.argv[2];
if (!solcDir) {
  process.stderr.write("usage: node compile.js <solc-js package dir> < standard-json-input\n");
  process.exit(2);
}
const solc = require(solcDir);

function refuseImport(path) {
  return {
    error:
      "import " + JSON.stringify(path) + " is not among the compiled sources: every source must live under the " +
      "contracts directory and be imported by a path relative to the importing file",
  };
}

const chunks = [];
process.stdin.on("data", (chunk) => chunks.push(chunk));
process.stdin.on("end", () => {
  const input = Buffer.concat(chunks).toString("utf8");
  const output = solc.compile(input, { import: refuseImport });
  process.stdout.write('{"version":' + JSON.stringify(solc.version()) + ',"output":' + output + "}");
});
