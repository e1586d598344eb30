'use strict';
// Benchmark-only patch of s3rver 3.7's listing, loaded with `node --require` (bench/servers.py).
//
// s3rver's FilesystemStore.listObjects reads, sorts and stats the bucket's directory tree for
// every page it serves, synchronously: a page costs O(keys in the directory), a whole listing
// O(N^2 / 1000). Measured here: ~150 s of s3rver CPU to list a 100k-key hour (0.6 s for the
// first page, 2.3 s for the last), during which its single thread serves no GET. Real S3 serves
// a page in tens of milliseconds whatever its depth, so stock s3rver would make every 100k case
// a measurement of s3rver's listing rather than of the client.
//
// This keeps s3rver's semantics and swaps the algorithm, for listings without a delimiter whose
// prefix's directory holds only objects (an hour: events/YYYY/MM/DD/HH/...): a sorted index of
// that directory's keys (rebuilt whenever the directory's mtime changes) and a binary search for
// start-after. Same keys, same order, same metadata (s3rver's own getMetadata), same truncation;
// any other listing runs s3rver's original code. `bench/run.py --s3rver-stock-listing` turns the
// patch off.
const fs = require('fs');
const path = require('path');

const lib = process.env.S3RVER_LIB;
const FilesystemStore = require(path.join(lib, 'stores', 'filesystem.js'));
const S3Object = require(path.join(lib, 'models', 'object.js'));

const OBJECT_SUFFIX = '._S3rver_object';
const original = FilesystemStore.prototype.listObjects;
const indexes = new Map(); // directory -> { mtimeMs, keys }

function keysOf(directory, keyPrefix) {
  const stat = fs.statSync(directory, { throwIfNoEntry: false });
  if (!stat || !stat.isDirectory()) return null;
  const cached = indexes.get(directory);
  if (cached && cached.mtimeMs === stat.mtimeMs) return cached.keys;
  const keys = [];
  for (const entry of fs.readdirSync(directory, { withFileTypes: true })) {
    if (entry.isDirectory()) return null; // nested keys: s3rver's own walk
    if (entry.name.endsWith(OBJECT_SUFFIX)) {
      keys.push(keyPrefix + entry.name.slice(0, -OBJECT_SUFFIX.length));
    }
  }
  keys.sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b))); // S3: UTF-8 byte order
  indexes.set(directory, { mtimeMs: stat.mtimeMs, keys });
  return keys;
}

FilesystemStore.prototype.listObjects = async function listObjects(bucket, options) {
  const { delimiter = '', startAfter = '', prefix = '', maxKeys = Infinity } = options;
  const directoryPrefix = prefix.slice(0, prefix.lastIndexOf('/') + 1);
  if (delimiter || !directoryPrefix || process.platform === 'win32') {
    return original.call(this, bucket, options);
  }
  const directory = path.join(this.getBucketPath(bucket), ...directoryPrefix.split('/'));
  const keys = keysOf(directory, directoryPrefix);
  if (keys === null) return original.call(this, bucket, options);

  let lo = 0;
  let hi = keys.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (keys[mid] <= startAfter) lo = mid + 1;
    else hi = mid;
  }
  const page = [];
  let isTruncated = false;
  for (let i = lo; i < keys.length; i++) {
    const key = keys[i];
    if (key <= startAfter || !key.startsWith(prefix)) continue;
    if (page.length < maxKeys) {
      page.push(key);
    } else {
      isTruncated = true;
      break;
    }
  }
  const metadata = await Promise.all(
    page.map(key =>
      this.getMetadata(bucket, key).catch(err => {
        if (err.code === 'ENOENT') return undefined;
        throw err;
      }),
    ),
  );
  return {
    objects: page
      .map((key, i) => [key, metadata[i]])
      .filter(([, meta]) => meta !== undefined)
      .map(([key, meta]) => new S3Object(bucket, key, null, meta)),
    commonPrefixes: [],
    isTruncated,
  };
};
