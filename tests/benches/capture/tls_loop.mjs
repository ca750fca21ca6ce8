// A loopback TLS request loop in Node (its own OpenSSL): a tls server that
// echoes, one tls.connect client sending 1 KiB and waiting for the echo.
//     node tls_loop.mjs CERT KEY SECONDS
// Prints one JSON line: round trips made and the wall time they took. Each
// round trip is 4 SSL calls (write and read at each end) and 4 socket calls.
import { readFileSync } from "node:fs";
import tls from "node:tls";

const [certPath, keyPath, seconds] = process.argv.slice(2);
const server = tls.createServer(
  { cert: readFileSync(certPath), key: readFileSync(keyPath) },
  (socket) => {
    socket.setNoDelay(true);
    let pending = 0;
    socket.on("data", (chunk) => {
      pending += chunk.length;
      while (pending >= 1024) {
        pending -= 1024;
        socket.write(Buffer.alloc(1024, 0x79));
      }
    });
  },
);
server.listen(0, "127.0.0.1", () => {
  const client = tls.connect({ port: server.address().port, host: "127.0.0.1", rejectUnauthorized: false }, () => {
    client.setNoDelay(true);
    const payload = Buffer.alloc(1024, 0x78);
    const started = process.hrtime.bigint();
    const deadline = started + BigInt(Math.round(Number(seconds) * 1e9));
    let rounds = 0;
    let received = 0;
    client.on("data", (chunk) => {
      received += chunk.length;
      while (received >= 1024) {
        received -= 1024;
        rounds += 1;
        const now = process.hrtime.bigint();
        if (now >= deadline) {
          console.log(JSON.stringify({ ops: rounds, ns: Number(now - started) }));
          client.destroy();
          server.close();
          return;
        }
        client.write(payload);
      }
    });
    client.write(payload);
  });
});
