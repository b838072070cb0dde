/*
Copyright The Tagger Authors.

Licensed under the Apache License, Version 2.0 (the "License");
you may not use this file except in compliance with the License.
You may obtain a copy of the License at

    http://www.apache.org/licenses/LICENSE-2.0

Unless required by applicable law or agreed to in writing, software
distributed under the License is distributed on an "AS IS" BASIS,
WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
See the License for the specific language governing permissions and
limitations under the License.
*/

package importer

import (
	"context"
	"io"
	"reflect"
	"strings"
	"sync"

	"github.com/opencontainers/go-digest"
	"go.podman.io/image/v5/pkg/blobinfocache/memory"
	"go.podman.io/image/v5/types"
)

// Cross-repository mounts in the mirror.
//
// containers/image mounts a blob from another repository of the destination
// registry when its blob-info cache says the blob is there. copy.Image takes
// no cache: it always opens blobinfocache.DefaultCache(DestinationCtx),
// which is SQLite (cgo, so unavailable here) or a fresh in-memory cache per
// copy that knows nothing. So the mirror destination is wrapped: its
// PutBlob and TryReusingBlob are given a cache kept for the server's life
// instead of the per-copy one. Only import copies use it; pushes do not go
// through the importer, and never mount (their relay drops mount requests).
//
// One cache per mirror registry and mirror credential: a location recorded
// with one credential is never offered to a copy made with another. Each
// cache is bounded: after DefaultBlobCacheRecords recorded blobs it starts
// over empty (the only cost is uploads instead of mounts until it has
// learned the mirror again), and at most maxBlobCaches are kept.

// DefaultBlobCacheRecords is how many blob records (uploads and reuses) a
// mirror's cache takes before it starts over; about 200 bytes each.
const DefaultBlobCacheRecords = 100_000

// maxBlobCaches bounds the number of (mirror, credential) caches.
const maxBlobCaches = 32

type blobCaches struct {
	limit int

	mu     sync.Mutex
	caches map[string]*blobCache
	tick   uint64
}

// blobCache is one mirror's cache.
type blobCache struct {
	limit int

	mu      sync.Mutex
	cache   types.BlobInfoCache
	records int
	used    uint64 // blobCaches.tick when last handed out
}

// forMirror returns the cache of the mirror registry host used with cred.
func (b *blobCaches) forMirror(host string, cred *Credential) *blobCache {
	key := strings.ToLower(host) + "\x00" + credentialKey(cred)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.caches == nil {
		b.caches = map[string]*blobCache{}
	}
	b.tick++
	c := b.caches[key]
	if c == nil {
		if len(b.caches) >= maxBlobCaches {
			var oldest string
			for k, v := range b.caches {
				if oldest == "" || v.used < b.caches[oldest].used {
					oldest = k
				}
			}
			delete(b.caches, oldest)
		}
		limit := b.limit
		if limit <= 0 {
			limit = DefaultBlobCacheRecords
		}
		c = &blobCache{limit: limit}
		b.caches[key] = c
	}
	c.used = b.tick
	return c
}

// get returns the cache to record into and look up in.
func (c *blobCache) get() types.BlobInfoCache {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cache == nil || c.records >= c.limit {
		c.cache, c.records = memory.New(), 0
	}
	c.records++
	return c.cache
}

// cachedDestination is the mirror reference whose destinations use a
// lasting blob-info cache.
type cachedDestination struct {
	types.ImageReference
	cache *blobCache
}

func (r cachedDestination) NewImageDestination(ctx context.Context, sys *types.SystemContext) (types.ImageDestination, error) {
	d, err := r.ImageReference.NewImageDestination(ctx, sys)
	if err != nil {
		return nil, err
	}
	return &cachingDestination{ImageDestination: d, cache: r.cache}, nil
}

// cachingDestination replaces the per-copy cache by the lasting one. It
// only implements the public types.ImageDestination; containers/image
// adapts it as it does any other (for a registry destination nothing used
// by a digest-preserving copy is lost).
type cachingDestination struct {
	types.ImageDestination
	cache *blobCache
}

// PutBlob uploads a blob the mirror does not have in the repository. A
// config is first tried as a mount (copy.Image tries layers itself, not
// configs).
func (d *cachingDestination) PutBlob(ctx context.Context, stream io.Reader, info types.BlobInfo, _ types.BlobInfoCache, isConfig bool) (types.BlobInfo, error) {
	if isConfig && info.Digest != "" {
		if reused, blob, err := d.TryReusingBlob(ctx, info, nil, false); err == nil && reused {
			return types.BlobInfo{Digest: blob.Digest, Size: blob.Size}, nil
		}
	}
	return d.ImageDestination.PutBlob(ctx, stream, info, d.cache.get(), isConfig)
}

// TryReusingBlob finds the blob in the repository, or mounts it from
// another repository of the mirror where the cache saw it. Only the exact
// digest is reused: the blob is byte for byte the source's, so it is
// described as the source describes it.
func (d *cachingDestination) TryReusingBlob(ctx context.Context, info types.BlobInfo, _ types.BlobInfoCache, _ bool) (bool, types.BlobInfo, error) {
	cache := d.cache.get()
	seedCompression(cache, info.Digest)
	reused, blob, err := d.ImageDestination.TryReusingBlob(ctx, info, cache, false)
	if err != nil || !reused {
		return reused, types.BlobInfo{}, err
	}
	if blob.Digest != info.Digest {
		// Cannot happen without substitution; never use another blob.
		return false, types.BlobInfo{}, nil
	}
	out := info
	out.Size = blob.Size
	return true, out, nil
}

// seedCompression makes cache offer the locations it knows of d.
// containers/image's registry destination asks the cache for candidates
// with CandidateLocations2, which leaves out digests whose compression it
// does not know, and only copy.Image, with an internal type, can record
// that. TryReusingBlob describes a reused blob as the source does whatever
// the cache says, so any known value serves; "uncompressed" asks for no
// manifest format in particular. The public API offers no other way:
// reflection calls the method of the in-memory cache.
func seedCompression(cache types.BlobInfoCache, d digest.Digest) bool {
	m := reflect.ValueOf(cache).MethodByName("RecordDigestCompressorData")
	if !m.IsValid() || m.Type().NumIn() != 2 || m.Type().In(0) != reflect.TypeOf(d) || m.Type().In(1).Kind() != reflect.Struct {
		return false
	}
	data := reflect.New(m.Type().In(1)).Elem()
	base, specific := data.FieldByName("BaseVariantCompressor"), data.FieldByName("SpecificVariantCompressor")
	if !base.IsValid() || base.Kind() != reflect.String || !specific.IsValid() || specific.Kind() != reflect.String {
		return false
	}
	base.SetString("uncompressed")
	specific.SetString("unknown")
	m.Call([]reflect.Value{reflect.ValueOf(d), data})
	return true
}
