package controlclient

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"

	"github.com/nats-io/nats.go/jetstream"
)

// Progress is told how many bytes of total have been sent so far.
type Progress func(done, total int64)

// Uploaded describes an artifact put in the object store.
type Uploaded struct {
	Bucket string
	Key    string
	Size   int64
	Hash   string // hex sha256, for the workload JWT
}

// Upload puts r (size bytes, used for progress only) into bucket under key,
// creating the bucket when it does not exist, and hashes the bytes on the way.
func (c *Client) Upload(ctx context.Context, bucket, key string, r io.Reader, size int64, progress Progress) (*Uploaded, error) {
	js, err := jetstream.New(c.nc)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	obs, err := js.ObjectStore(ctx, bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		obs, err = js.CreateObjectStore(ctx, jetstream.ObjectStoreConfig{
			Bucket:      bucket,
			Description: "artifacts uploaded by nex devrun",
		})
	}
	if err != nil {
		return nil, fmt.Errorf("object store %s on %s: %w (is JetStream enabled?)", bucket, c.url(), err)
	}
	h := sha256.New()
	cr := &countingReader{r: io.TeeReader(r, h), total: size, progress: progress}
	info, err := obs.Put(ctx, jetstream.ObjectMeta{Name: key}, cr)
	if err != nil {
		return nil, fmt.Errorf("upload %s/%s: %w", bucket, key, err)
	}
	return &Uploaded{Bucket: bucket, Key: key, Size: int64(info.Size), Hash: hex.EncodeToString(h.Sum(nil))}, nil
}

// HashObject reads an object and returns its hex sha256 and size.
func (c *Client) HashObject(ctx context.Context, bucket, key string) (string, int64, error) {
	js, err := jetstream.New(c.nc)
	if err != nil {
		return "", 0, fmt.Errorf("jetstream: %w", err)
	}
	obs, err := js.ObjectStore(ctx, bucket)
	if err != nil {
		return "", 0, fmt.Errorf("object store %s: %w", bucket, err)
	}
	res, err := obs.Get(ctx, key)
	if err != nil {
		return "", 0, fmt.Errorf("get %s/%s: %w", bucket, key, err)
	}
	defer res.Close()
	hash, n, err := HashReader(res)
	if err != nil {
		return "", 0, fmt.Errorf("read %s/%s: %w", bucket, key, err)
	}
	return hash, n, nil
}

type countingReader struct {
	r        io.Reader
	done     int64
	total    int64
	progress Progress
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.done += int64(n)
	if c.progress != nil && n > 0 {
		c.progress(c.done, c.total)
	}
	return n, err
}
