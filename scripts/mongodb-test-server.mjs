// The tests' MongoDB: CongoDB (installed by `scripts/install-deps.sh test` into .deps/congodb),
// a MongoDB-wire server with its data in files, so a stop and a start keep what it held.
//   node scripts/mongodb-test-server.mjs PORT DATA_DIR
// Listens on CONGODB_HOST (default 127.0.0.1) at PORT, prints "listening mongodb://127.0.0.1:PORT" once it accepts
// connections, and stops on SIGTERM or SIGINT.
import { CongoServer } from '../.deps/congodb/smartmongo/dist_ts/congodb/index.js';

const [port, storagePath] = process.argv.slice(2);
if (!port || !storagePath) {
  console.error('usage: mongodb-test-server.mjs PORT DATA_DIR');
  process.exit(2);
}
const host = process.env.CONGODB_HOST || '127.0.0.1';
const server = new CongoServer({ port: Number(port), host, storage: 'file', storagePath });
await server.start();
console.log(`listening ${server.getConnectionUri()}`);
const stop = async () => {
  await server.stop();
  process.exit(0);
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
