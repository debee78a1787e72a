// KEDA-shaped decoder, the anchor for scripts/bench-decode.sh: a jobrequests answer read whole
// and decoded with encoding/json into structs with the fields KEDA's azure-pipelines scaler
// declares (pkg/scalers/azure_pipelines_scaler.go), as it does once per trigger per poll.
// Written for this project from that field list.
//
// usage: keda-anchor <body.json> <iterations>
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strconv"
	"syscall"
	"time"
)

type link struct {
	Href string `json:"href"`
}

type links struct {
	Self link `json:"self"`
	Web  link `json:"web"`
}

type agentRef struct {
	Links             links  `json:"_links"`
	ID                int    `json:"id"`
	Name              string `json:"name"`
	Version           string `json:"version"`
	OsDescription     string `json:"osDescription"`
	Enabled           bool   `json:"enabled"`
	Status            string `json:"status"`
	ProvisioningState string `json:"provisioningState"`
	AccessPoint       string `json:"accessPoint"`
}

type named struct {
	Links links  `json:"_links"`
	ID    int    `json:"id"`
	Name  string `json:"name"`
}

type jobRequest struct {
	RequestID     int       `json:"requestId"`
	QueueTime     time.Time `json:"queueTime"`
	AssignTime    time.Time `json:"assignTime"`
	ReceiveTime   time.Time `json:"receiveTime"`
	LockedUntil   time.Time `json:"lockedUntil"`
	ServiceOwner  string    `json:"serviceOwner"`
	HostID        string    `json:"hostId"`
	Result        *string   `json:"result"`
	ScopeID       string    `json:"scopeId"`
	PlanType      string    `json:"planType"`
	PlanID        string    `json:"planId"`
	JobID         string    `json:"jobId"`
	Demands       []string  `json:"demands"`
	ReservedAgent *agentRef `json:"reservedAgent,omitempty"`
	Definition    named     `json:"definition"`
	Owner         named     `json:"owner"`
	Data          struct {
		ParallelismTag string `json:"ParallelismTag"`
		IsScheduledKey string `json:"IsScheduledKey"`
	} `json:"data"`
	PoolID          int         `json:"poolId"`
	OrchestrationID string      `json:"orchestrationId"`
	Priority        int         `json:"priority"`
	MatchedAgents   *[]agentRef `json:"matchedAgents,omitempty"`
}

type jobRequests struct {
	Count int          `json:"count"`
	Value []jobRequest `json:"value"`
}

func cpu() time.Duration {
	var usage syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &usage)
	return time.Duration(usage.Utime.Nano() + usage.Stime.Nano())
}

func main() {
	body, err := os.ReadFile(os.Args[1])
	if err != nil {
		panic(err)
	}
	iterations, _ := strconv.Atoi(os.Args[2])
	cpus := make([]time.Duration, 0, iterations)
	walls := make([]time.Duration, 0, iterations)
	queued := 0
	for i := 0; i < iterations; i++ {
		before := cpu()
		started := time.Now()
		var jrs jobRequests
		if err := json.Unmarshal(body, &jrs); err != nil {
			panic(err)
		}
		queued = 0
		for _, r := range jrs.Value {
			if r.Result == nil && r.AssignTime.IsZero() {
				queued++
			}
		}
		cpus = append(cpus, cpu()-before)
		walls = append(walls, time.Since(started))
	}
	sort.Slice(cpus, func(a, b int) bool { return cpus[a] < cpus[b] })
	sort.Slice(walls, func(a, b int) bool { return walls[a] < walls[b] })
	median := cpus[len(cpus)/2]
	wall := walls[len(walls)/2]
	var usage syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &usage)
	fmt.Printf("keda-shaped Go  %d bytes, %d iterations: median %.1f ms wall, %.1f ms CPU with the GC's threads (%.0f MB/s of CPU), %d queued, peak RSS %.1f MiB\n",
		len(body), iterations, float64(wall.Microseconds())/1000, float64(median.Microseconds())/1000,
		float64(len(body))/median.Seconds()/1e6, queued, float64(usage.Maxrss)/1024)
}
