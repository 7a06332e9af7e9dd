package controlclient

import (
	"bytes"
	"context"
	"crypto/rand"
	"testing"
)

func TestUploadCreatesBucketHashesAndReportsProgress(t *testing.T) {
	nc := startServer(t)
	c := New(nc)
	ctx := context.Background()
	data := make([]byte, 700<<10) // several object-store chunks
	rand.Read(data)
	want, _, _ := HashReader(bytes.NewReader(data))

	var last, calls int64
	up, err := c.Upload(ctx, DefaultBucket, "blob", bytes.NewReader(data), int64(len(data)), func(done, total int64) {
		if done < last || total != int64(len(data)) {
			t.Errorf("progress went %d -> %d of %d", last, done, total)
		}
		last, calls = done, calls+1
	})
	if err != nil {
		t.Fatal(err)
	}
	if up.Hash != want || up.Size != int64(len(data)) || up.Bucket != DefaultBucket || up.Key != "blob" {
		t.Fatalf("Upload = %+v, want hash %s size %d", up, want, len(data))
	}
	if last != int64(len(data)) || calls < 2 {
		t.Fatalf("progress ended at %d after %d calls", last, calls)
	}
	// Second upload reuses the bucket and replaces the object.
	if _, err := c.Upload(ctx, DefaultBucket, "blob", bytes.NewReader(data[:10]), 10, nil); err != nil {
		t.Fatal(err)
	}
	got, n, err := c.HashObject(ctx, DefaultBucket, "blob")
	wantSmall, _, _ := HashReader(bytes.NewReader(data[:10]))
	if err != nil || got != wantSmall || n != 10 {
		t.Fatalf("HashObject = %s, %d, %v; want %s, 10", got, n, err, wantSmall)
	}
	if _, _, err := c.HashObject(ctx, DefaultBucket, "missing"); err == nil {
		t.Fatal("HashObject of a missing object succeeded")
	}
}
