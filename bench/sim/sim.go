package sim

import "slices"

// Result is the hit ratio of every policy on one trace at one cache size.
type Result struct {
	Trace string `json:"trace"`
	Size  int    `json:"size"`
	// HitRatio maps a policy name ("OPT" for Bélády) to its hit ratio in
	// [0, 1], the median over the replays.
	HitRatio map[string]float64 `json:"hit_ratio"`
	// Range is the [min, max] hit ratio of a policy whose replays did not
	// all agree (otter's sketch is seeded at random); absent otherwise.
	Range map[string][2]float64 `json:"range,omitempty"`
	// Errors maps a policy that could not be built to why.
	Errors map[string]string `json:"errors,omitempty"`
}

// OPT is the name of Bélády's optimum in results.
const OPT = "OPT"

// Replay runs OPT and every policy over t at each of its sizes, each
// policy reps times (a new instance each time), and keeps the median.
func Replay(t *Trace, policies []PolicyFactory, reps int) []Result {
	reps = max(reps, 1)
	var out []Result
	total := float64(len(t.Keys))
	for _, size := range t.Sizes {
		r := Result{Trace: t.Name, Size: size, HitRatio: map[string]float64{}}
		r.HitRatio[OPT] = float64(OptimalHits(t.Keys, size)) / total
	policy:
		for _, pf := range policies {
			ratios := make([]float64, 0, reps)
			for range reps {
				p, err := pf.New(size)
				if err != nil {
					if r.Errors == nil {
						r.Errors = map[string]string{}
					}
					r.Errors[pf.Name] = err.Error()
					continue policy
				}
				hits := 0
				for _, k := range t.Keys {
					if p.Access(k) {
						hits++
					}
				}
				ratios = append(ratios, float64(hits)/total)
			}
			slices.Sort(ratios)
			r.HitRatio[pf.Name] = ratios[len(ratios)/2]
			if lo, hi := ratios[0], ratios[len(ratios)-1]; lo != hi {
				if r.Range == nil {
					r.Range = map[string][2]float64{}
				}
				r.Range[pf.Name] = [2]float64{lo, hi}
			}
		}
		out = append(out, r)
	}
	return out
}
