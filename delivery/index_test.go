package delivery

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

// indexContents lists what an index holds: every ID with its tenant, as
// found by ID and as found by tenant, and the count.
func indexContents(t *testing.T, x *subIndex) (byID, byTenant []string) {
	t.Helper()
	x.each(func(s *Subscription) {
		got, ok := x.get(s.ID)
		if !ok || got != s {
			t.Fatalf("%s is listed but not found by ID", s.ID)
		}
		byID = append(byID, s.Tenant+"/"+s.ID+"@"+s.URL)
	})
	for _, shard := range x.byTenant {
		for tenant, list := range shard {
			if len(list) == 0 {
				t.Fatalf("tenant %q kept with no subscriptions", tenant)
			}
			for _, s := range list {
				if s.Tenant != tenant {
					t.Fatalf("%s listed under tenant %q, not %q", s.ID, tenant, s.Tenant)
				}
				byTenant = append(byTenant, s.Tenant+"/"+s.ID+"@"+s.URL)
			}
		}
	}
	if len(byID) != x.len() {
		t.Fatalf("len() = %d, %d listed", x.len(), len(byID))
	}
	slices.Sort(byID)
	slices.Sort(byTenant)
	return byID, byTenant
}

// Registrations, changes and deletes applied one by one give the index
// that indexing everything anew gives, and leave the indexes published
// before them as they were.
func TestIndexChangesMatchRebuild(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	static := []*Subscription{
		{ID: "static:a", Tenant: "", URL: "https://a"},
		{ID: "static:b", Tenant: "t1", URL: "https://b"},
		{ID: "clash", Tenant: "t2", URL: "https://static-clash"}, // a registration of this ID stays hidden
	}
	registered := map[string]*Subscription{}
	x := newSubIndex(static, registered)
	type snapshot struct {
		x              *subIndex
		byID, byTenant []string
	}
	var snapshots []snapshot
	for step := range 3000 {
		id := fmt.Sprint("sub_", rng.IntN(40))
		if rng.IntN(20) == 0 {
			id = "clash"
		}
		prev, ok := registered[id]
		if ok && rng.IntN(3) == 0 {
			delete(registered, id)
			x = x.without(prev)
		} else {
			s := &Subscription{ID: id, Tenant: fmt.Sprint("t", rng.IntN(4)), URL: fmt.Sprint("https://r/", step)}
			registered[id] = s
			var replaced *Subscription
			x, replaced = x.with(s)
			if id == "clash" {
				prev = nil // hidden by the static one, never indexed
			}
			if replaced != prev {
				t.Fatalf("step %d: replaced %v, want %v", step, replaced, prev)
			}
		}
		wantID, wantTenant := indexContents(t, newSubIndex(static, registered))
		gotID, gotTenant := indexContents(t, x)
		if !slices.Equal(gotID, wantID) || !slices.Equal(gotTenant, wantTenant) {
			t.Fatalf("step %d:\nby ID %v\nwant  %v\nby tenant %v\nwant      %v", step, gotID, wantID, gotTenant, wantTenant)
		}
		if step%100 == 0 {
			snapshots = append(snapshots, snapshot{x, gotID, gotTenant})
		}
	}
	for i, s := range snapshots {
		byID, byTenant := indexContents(t, s.x)
		if !slices.Equal(byID, s.byID) || !slices.Equal(byTenant, s.byTenant) {
			t.Fatalf("snapshot %d changed after it was published", i)
		}
	}
}
