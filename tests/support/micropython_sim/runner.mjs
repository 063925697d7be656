// Runs the supervisor firmware in MicroPython's WebAssembly port under node, for the tests.
//
//   node runner.mjs MODULES_DIR FIRMWARE_DIR SIM_DIR FLASH_DIR CONFIG_JSON
//
// It imports CONFIG_JSON's "entry" (default sim_main: the firmware's loop on the simulated clock;
// "main" runs the device's own main.py, which the tests do for the maintenance jumper).
// The firmware's *.py go to /fw, the simulation's to /sim, FLASH_DIR's files to /flash (the MCU's
// flash). The firmware and the host talk in JSON lines: simboard.sync writes one line to stdout
// and blocks reading one from stdin (a synchronous read, so MicroPython's loop needs no event
// loop). Before each line goes out, /flash is copied back to FLASH_DIR (each file written to a
// temporary name and renamed), so a test that kills this process keeps what the firmware had
// saved by its last sync, as flash keeps it over a power cut. MicroPython's own output goes to
// stderr. Exit status: 0 when the host closes stdin or says exit, 1 on a Python exception.
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";

const [modulesDir, firmwareDir, simDir, flashDir, configJson] = process.argv.slice(2);
const require = createRequire(path.join(path.resolve(modulesDir), "node_modules", "x.js"));
const { loadMicroPython } = await import(require.resolve("@micropython/micropython-webassembly-pyscript"));

const mp = await loadMicroPython({
  stdout: (line) => process.stderr.write(line + "\n"),
  stderr: (line) => process.stderr.write(line + "\n"),
});

function copyIn(hostDir, mpDir) {
  mp.FS.mkdir(mpDir);
  for (const name of fs.readdirSync(hostDir)) {
    const full = path.join(hostDir, name);
    if (fs.statSync(full).isFile()) mp.FS.writeFile(mpDir + "/" + name, fs.readFileSync(full));
  }
}
copyIn(firmwareDir, "/fw");
copyIn(simDir, "/sim");
copyIn(flashDir, "/flash");

// What the firmware does to its flash, as the host sees it: writes (by file) and renames.
const fsEvents = [];
const realRename = mp.FS.rename.bind(mp.FS);
mp.FS.rename = (from, to) => {
  fsEvents.push(["rename", from, to]);
  return realRename(from, to);
};
const realWrite = mp.FS.write.bind(mp.FS);
mp.FS.write = (stream, ...rest) => {
  if (stream.path && stream.path.startsWith("/flash/")) fsEvents.push(["write", stream.path]);
  return realWrite(stream, ...rest);
};

function copyOut() {
  const inside = new Set(mp.FS.readdir("/flash").filter((n) => n !== "." && n !== ".."));
  for (const name of inside) {
    const tmp = path.join(flashDir, "." + name + ".copying");
    fs.writeFileSync(tmp, mp.FS.readFile("/flash/" + name));
    fs.renameSync(tmp, path.join(flashDir, name));
  }
  for (const name of fs.readdirSync(flashDir)) {
    if (!inside.has(name) && !name.endsWith(".copying")) fs.unlinkSync(path.join(flashDir, name));
  }
}

let pending = Buffer.alloc(0);
function readLine() {
  const chunk = Buffer.alloc(65536);
  for (;;) {
    const nl = pending.indexOf(10);
    if (nl >= 0) {
      const line = pending.subarray(0, nl).toString("utf8");
      pending = pending.subarray(nl + 1);
      return line;
    }
    let n;
    try {
      n = fs.readSync(0, chunk, 0, chunk.length, null);
    } catch (err) {
      if (err.code === "EAGAIN") continue;
      if (err.code === "EOF") return "";
      throw err;
    }
    if (n === 0) return "";
    pending = Buffer.concat([pending, chunk.subarray(0, n)]);
  }
}

mp.registerJsModule("hostlink", {
  config: () => configJson,
  fs_events: () => JSON.stringify(fsEvents.splice(0)),
  send: (line) => {
    copyOut();
    fs.writeSync(1, line + "\n");
  },
  recv: () => readLine(),
});

try {
  const entry = JSON.parse(configJson).entry || "sim_main";
  mp.runPython(`import sys\nsys.path[:0] = ['/sim', '/fw']\nimport ${entry}\n`);
} catch (err) {
  process.stderr.write(String(err.message || err) + "\n");
  process.exit(1);
}
process.exit(0);
