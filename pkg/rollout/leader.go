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

package rollout

import (
	"context"
	"fmt"
	"os"
	"time"

	"k8s.io/apimachinery/pkg/util/uuid"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/klog/v2"
)

// LeaderElection says which coordination.k8s.io Lease the replicas share.
type LeaderElection struct {
	Namespace     string
	Name          string
	LeaseDuration time.Duration
	RenewDeadline time.Duration
	RetryPeriod   time.Duration
}

// Identity names this replica in the Lease: host name and a random suffix,
// so two processes on one host differ.
func Identity() string {
	host, _ := os.Hostname()
	return fmt.Sprintf("%s_%s", host, uuid.NewUUID())
}

// RunWithLeaderElection runs run while this replica holds the Lease, and
// campaigns again when it loses it, until ctx ends. run gets a context that
// ends when leadership does.
func RunWithLeaderElection(ctx context.Context, client kubernetes.Interface, le LeaderElection, identity string, run func(context.Context)) error {
	lock, err := resourcelock.New(resourcelock.LeasesResourceLock, le.Namespace, le.Name,
		client.CoreV1(), client.CoordinationV1(), resourcelock.ResourceLockConfig{Identity: identity})
	if err != nil {
		return err
	}
	for ctx.Err() == nil {
		elector, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock:            lock,
			LeaseDuration:   le.LeaseDuration,
			RenewDeadline:   le.RenewDeadline,
			RetryPeriod:     le.RetryPeriod,
			ReleaseOnCancel: true,
			Name:            le.Name,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: run,
				OnStoppedLeading: func() { klog.InfoS("Not leading", "lease", klog.KRef(le.Namespace, le.Name), "identity", identity) },
				OnNewLeader: func(id string) {
					if id != identity {
						klog.InfoS("Another replica leads", "lease", klog.KRef(le.Namespace, le.Name), "leader", id)
					}
				},
			},
		})
		if err != nil {
			return err
		}
		elector.Run(ctx) // returns when leadership is lost or ctx ends
	}
	return nil
}
