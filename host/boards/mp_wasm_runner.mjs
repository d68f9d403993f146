// Runs one program under the WebAssembly port of MicroPython, for edgebp.host.boards.mprun.
//
//   node mp_wasm_runner.mjs <dir holding node_modules> <job.json>
//
// job.json: {"root": "/device", "files": {"relative/path.py": "source", ...},
//            "script": "source of main.py", "heapsize": bytes or null}
// Exit code: the program's SystemExit code; 1 on an uncaught exception or if the program stopped
// with the heap still locked; 2 if the runner itself failed.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

// The port spins forever if an exception escapes while the heap is locked, and heap_unlock()
// on an unlocked heap wraps its counter: so unlock down to depth 0 before anything propagates.
// SystemExit is caught here because the port reports it like any other exception.
const wrapper = (root) => `
import sys, micropython
sys.path.insert(0, ${JSON.stringify(root)})
_edgebp_exit = 0
_edgebp_locked = False
def _edgebp_main():
    global _edgebp_exit, _edgebp_locked
    try:
        try:
            path = ${JSON.stringify(root + "/main.py")}
            with open(path) as f:
                code = compile(f.read(), path, "exec")
            exec(code, {"__name__": "__main__"})
        finally:
            micropython.heap_lock()
            if micropython.heap_unlock():
                while micropython.heap_unlock():
                    pass
                _edgebp_locked = True
    except SystemExit as e:
        code = e.args[0] if e.args else None
        if code is None:
            _edgebp_exit = 0
        elif isinstance(code, int):
            _edgebp_exit = code
        else:
            print(code, file=sys.stderr)
            _edgebp_exit = 1
_edgebp_main()
`;

// Byte-wise output, flushed per line, so a last line without a newline is not lost.
function lineWriter(stream) {
  let pending = [];
  const flush = () => {
    if (pending.length) {
      stream.write(Buffer.from(pending));
      pending = [];
    }
  };
  const write = (bytes) => {
    for (const b of bytes) {
      pending.push(b);
      if (b === 10) flush();
    }
  };
  return { write, flush };
}

function mkdirs(FS, dir) {
  let path = "";
  for (const part of dir.split("/").filter(Boolean)) {
    path += "/" + part;
    try {
      FS.mkdir(path);
    } catch {
      // already there
    }
  }
}

async function main() {
  const [packageDir, jobPath] = process.argv.slice(2);
  const job = JSON.parse(readFileSync(jobPath, "utf8"));
  const entry = join(
    packageDir, "node_modules", "@micropython", "micropython-webassembly-pyscript", "micropython.mjs");
  const { loadMicroPython } = await import(pathToFileURL(entry).href);

  const out = lineWriter(process.stdout);
  const err = lineWriter(process.stderr);
  const options = { stdout: out.write, stderr: err.write, linebuffer: false };
  if (job.heapsize) options.heapsize = job.heapsize;
  const mp = await loadMicroPython(options);

  const root = job.root;
  mkdirs(mp.FS, root);
  for (const [rel, text] of Object.entries(job.files)) {
    const path = root + "/" + rel;
    mkdirs(mp.FS, path.slice(0, path.lastIndexOf("/")));
    mp.FS.writeFile(path, text);
  }
  for (const [rel, b64] of Object.entries(job.binary || {})) {
    const path = root + "/" + rel;
    mkdirs(mp.FS, path.slice(0, path.lastIndexOf("/")));
    mp.FS.writeFile(path, Buffer.from(b64, "base64"));
  }
  mp.FS.writeFile(root + "/main.py", job.script);

  let code = 0;
  try {
    mp.runPython(wrapper(root));
    code = mp.globals.get("_edgebp_exit");
  } catch (e) {
    if (e.constructor.name !== "PythonError") throw e;
    out.flush();
    err.write(Buffer.from(e.message.endsWith("\n") ? e.message : e.message + "\n"));
    code = 1;
  }
  out.flush();
  if (mp.globals.get("_edgebp_locked")) {
    // Whatever was raised under the lock lost its arguments and traceback (no heap for them).
    err.write(Buffer.from("mp_wasm_runner: the program stopped with the heap locked\n"));
    code = code || 1;
  }
  err.flush();
  return code;
}

try {
  process.exitCode = await main();
} catch (e) {
  process.stderr.write(`mp_wasm_runner: ${e && e.stack ? e.stack : e}\n`);
  process.exitCode = 2;
}
